"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``), in a child process.

``create --quantize`` and ``/api/create``'s ``quantize`` come here. The quantizer is native code reading a
user's file: a bug there is a SIGSEGV or an abort, so it runs in a plain ``python -c`` child (as the model
runner does, ``remote.py``: no ``multiprocessing`` fork of a threaded server, no pickle), in its own session
so a terminal's Ctrl-C reaches only the caller, which then kills it. Whatever ends the child early, the
output file is removed and the caller gets one ``RunnerError`` line; the source file is only read (llama.cpp
maps it read-only).

``llama_model_quantize`` has no progress callback, but llama.cpp logs one line per tensor as it finishes it
(``[   3/  39] blk.0.attn_q.weight - [  256,   256,     1,     1], type =    f16, converting to q4_K ..``):
the child sends its log to stderr and the parent turns those lines into progress, in bytes of the source
(each tensor's shape times its element size), so the bar ends at the source's size.

The types are the ones Ollama's ``create --quantize`` accepts (``ggml.ParseFileType``), case-insensitive; the
sources, an F32, F16 or BF16 GGUF (Ollama: F16 and F32 only). ``MODELPKG_TEST_QUANTIZE_FAULT``
(``base.config.quantize_fault``; tests only) is read in the child.

Adapter: imports the core's errors, ``base.config`` and ``base.fsutil``; ``llama_cpp`` only in the child
(``child_main``), through ``runner.import_llama_cpp``.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from modelpkg.base import config, fsutil
from modelpkg.core.errors import InvalidInputError, RunnerError
from modelpkg.core.progress import NullProgress, Progress

# Ollama's names -> llama.h's ``enum llama_ftype`` constants as llama-cpp-python exposes them
FTYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
SOURCE_TYPES = ("F32", "F16", "BF16")  # what a GGUF's general.file_type may be (ggufmeta.FILE_TYPES' names)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from modelpkg.runtime.quantize import child_main; "
        "child_main(sys.argv[2:])")
EXIT_FAILED = 1  # llama_model_quantize returned an error (its reason is in the log)
EXIT_NO_LLAMA = 3  # llama-cpp-python is missing or does not load (the reason is the last log line)
ERROR_PREFIX = "modelpkg-quantize-error: "
LOG_LINES = 40  # the child's last log lines kept for an error message
_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-\s+\[([\d,\s]+)\],\s+type\s*=\s*(\w+)")
_ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2}
_FAILED = re.compile(r"failed to quantize: (.+)")


def parse_type(text: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``; anything else is one line listing the accepted types."""
    name = text.strip().upper()
    if name not in FTYPES:
        raise InvalidInputError(f"unsupported quantization type {text!r}: the accepted types are "
                                f"{', '.join(FTYPES)}", "pick one of those (any case), e.g. --quantize q4_K_M")
    return name


def check_source(file_type: str, subject: str, want: str) -> None:
    """Refuse a source that is already quantized, as Ollama does ("quantization is only supported for F16
    and F32 models"), naming what it is."""
    if file_type not in SOURCE_TYPES:
        raise InvalidInputError(
            f"quantization is only supported for F16, BF16 and F32 models: {subject} is "
            f"{file_type or 'of unknown type'}",
            f"FROM the model's F16, BF16 or F32 GGUF to make {want}, or leave out the quantize option")


def quantize(src: Path, dst: Path, want: str, *, progress: Progress | None = None, task: str = "quantize",
             label: str = "") -> None:
    """Write ``src`` quantized to ``want`` (a ``parse_type`` name) as the new file ``dst``.

    On any failure, an interrupt included, the child is killed, ``dst`` is removed and the error raised;
    ``src`` is never written.
    """
    progress = progress or NullProgress()
    want = parse_type(want)
    total = src.stat().st_size
    progress.start(task, total, label or f"quantizing to {want}")
    proc = subprocess.Popen(
        [sys.executable, "-c", BOOT, str(PACKAGE_ROOT), str(src), str(dst), want],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
    try:
        done = _follow(proc, tail, progress, task, total)
        code = proc.wait()
        if code != 0:
            raise _failure(code, tail, src, want)
        _fsync(dst)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fsutil.unlink_quietly(dst)
        raise
    finally:
        proc.stderr.close()
    if total > done:  # the header: the bar ends full
        progress.advance(task, total - done)
    progress.finish(task)


def _follow(proc: subprocess.Popen, tail: collections.deque, progress: Progress, task: str, total: int) -> int:
    """Read the child's log to its end: progress from the tensor lines (the bytes reported are returned),
    the last lines kept for errors."""
    done = 0
    assert proc.stderr is not None
    while line := proc.stderr.readline(1 << 16):
        text = line.decode("utf-8", "replace").rstrip()
        tail.append(text)
        match = _TENSOR.search(text)
        if match:
            count = 1
            for dim in match.group(4).split(","):
                count *= int(dim.strip() or 1)
            step = min(count * _ELEMENT_BYTES.get(match.group(5).lower(), 0), total - done)
            if step > 0:
                done += step
                progress.advance(task, step)
    return done


def _failure(code: int, tail: collections.deque, src: Path, want: str) -> RunnerError:
    lines = list(tail)
    said = next((line[len(ERROR_PREFIX):] for line in reversed(lines) if line.startswith(ERROR_PREFIX)), None)
    if code == EXIT_NO_LLAMA and said:
        return RunnerError(f"quantizing needs llama.cpp: {said}", "install it with: pip install 'modelpkg[run]'")
    reason = next((m.group(1) for m in map(_FAILED.search, reversed(lines)) if m), None)
    if code == EXIT_FAILED and reason:
        return RunnerError(f"llama.cpp cannot quantize {src.name} to {want}: {reason}",
                           "the file may be damaged, or of an architecture this llama-cpp-python does not know")
    if code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    else:
        how = f"exit code {code}"
    last = next((line for line in reversed(lines) if line.strip()), "")
    return RunnerError(f"quantizing {src.name} to {want} failed: the quantizer process ended with {how}",
                       "nothing was stored and the source is unchanged"
                       + (f"; llama.cpp's last log line: {last.strip()[:200]}" if last else ""))


def _fsync(path: Path) -> None:
    """The child's output is on disk before the caller renames it into the store."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as e:
        raise RunnerError(f"the quantizer ended without writing {path.name}") from e
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------------
# the child: ``python -c BOOT <package root> <src> <dst> <type>``


def child_main(argv: list[str]) -> None:
    src, dst, want = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    _die_with_parent()
    from modelpkg.runtime.runner import import_llama_cpp

    try:
        llama_cpp = import_llama_cpp()
    except RunnerError as e:
        _say(ERROR_PREFIX + e.message)
        os._exit(EXIT_NO_LLAMA)
    fault = config.quantize_fault()
    seen = [0]

    @llama_cpp.llama_log_callback
    def log(level, text, user_data):  # ggml_log_callback's signature
        os.write(2, text or b"")
        if fault and text and _TENSOR.search(text.decode("utf-8", "replace")):
            seen[0] += 1
            if seen[0] >= 2:  # while the output holds a header and a tensor: a crash mid-file
                _fault(fault)

    llama_cpp.llama_log_set(log, None)
    llama_cpp.llama_backend_init()  # as llama.cpp's own llama-quantize does first
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[want])
    code = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    os._exit(EXIT_FAILED if code else 0)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a killed ``create`` leaves no quantizer writing a
    file nobody will rename; the store removes the file of a dead owner). Best effort elsewhere."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(EXIT_FAILED)


def _say(text: str) -> None:
    os.write(2, (text + "\n").encode())


def _fault(kind: str) -> None:
    """What a broken quantizer does (tests only): a real SIGSEGV or abort(), or a hang (for Ctrl-C tests)."""
    if kind == "stall":
        while True:
            time.sleep(60)
    from modelpkg.runtime.worker import cause_fault

    cause_fault(kind)
