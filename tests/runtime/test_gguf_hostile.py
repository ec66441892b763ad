"""The GGUF reader is total: hostile metadata is one ``InvalidInputError`` line in bounded time, and only
regular files are opened as models (a FIFO or a device is refused before any read that could block).

The named cases (Ollama's CVE-2025-0315/0312/0317 class) are written by hand below (the ``gguf`` writer
cannot write a lie, such as a count the file does not hold) and kept as files in ``gguf_corpus/``, which
every run replays. The properties mutate every count and length field of a valid GGUF written with the
``gguf`` package (the stock reader says where those fields are) and append arbitrary bytes to a valid
header. Anything that could hang runs in a thread with a time limit, so a regression fails instead of
hanging the suite. The CLI and server checks are in tests/reliability/test_hostile_gguf.py.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpkg.base import fsutil
from modelpkg.core.errors import InvalidInputError, ModelpkgError
from modelpkg.core.reference import parse_reference
from modelpkg.ops.create import create
from modelpkg.runtime import ggufmeta
from modelpkg.runtime.ggufmeta import read_info
from modelpkg.store import Store
from timebox import within

CORPUS = Path(__file__).parent / "gguf_corpus"
LIMIT = 20.0  # seconds before "it hangs": far above the milliseconds these take, below a stuck test's patience
PER_EXAMPLE_SECONDS = 2.0
SCALE = max(1, int(os.environ.get("MODELPKG_FUZZ_EXAMPLES", "1") or 1))


def refused(path: Path) -> InvalidInputError:
    """read_info(path) must be one InvalidInputError line, quickly."""
    with pytest.raises(InvalidInputError) as caught:
        within(LIMIT, read_info, path)
    assert "\n" not in caught.value.message and "\n" not in (caught.value.hint or "")
    return caught.value


# ------------------------------------------------------------------------------------------------------
# hand-made hostile files

UINT8, UINT32, STRING, ARRAY = 0, 4, 8, 9


def u32(n: int) -> bytes:
    return struct.pack("<I", n % (1 << 32))


def u64(n: int) -> bytes:
    return struct.pack("<Q", n % (1 << 64))


def text(s: str) -> bytes:
    data = s.encode()
    return u64(len(data)) + data


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return text(key) + u32(vtype) + payload


def gguf_file(*kvs: bytes, tensors: bytes = b"", n_tensors: int = 0, tail: bytes = b"") -> bytes:
    return b"GGUF" + u32(3) + u64(n_tensors) + u64(len(kvs)) + b"".join(kvs) + tensors + tail


ARCH = kv("general.architecture", STRING, text("llama"))


def huge_string_array(count: int = 1 << 60) -> bytes:
    """A vocabulary that claims ``count`` tokens and holds ten empty ones."""
    return gguf_file(ARCH, kv("tokenizer.ggml.tokens", ARRAY, u32(STRING) + u64(count) + u64(0) * 10))


def huge_string(length: int = 1 << 62) -> bytes:
    """A name whose length field claims ``length`` bytes, followed by a few."""
    return gguf_file(ARCH, kv("general.name", STRING, u64(length) + b"tiny" * 4))


def deep_array(depth: int = 5000) -> bytes:
    """An array of an array of ... ``depth`` levels, the innermost an empty uint8 array."""
    return gguf_file(ARCH, kv("deep", ARRAY, (u32(ARRAY) + u64(1)) * (depth - 1) + u32(UINT8) + u64(0)))


def huge_counts() -> dict[str, bytes]:
    """Header counts that the file cannot hold."""
    return {
        "kv_count_2^64-1": b"GGUF" + u32(3) + u64(0) + u64((1 << 64) - 1) + ARCH,
        "tensor_count_2^60": b"GGUF" + u32(3) + u64(1 << 60) + u64(1) + ARCH,
        "uint32_array_2^62": gguf_file(ARCH, kv("scores", ARRAY, u32(UINT32) + u64(1 << 62) + u32(1) * 8)),
        "array_of_arrays_2^60": gguf_file(ARCH, kv("a", ARRAY, u32(ARRAY) + u64(1 << 60) + (u32(UINT8) + u64(0)) * 4)),
        "key_length_2^63": b"GGUF" + u32(3) + u64(0) + u64(1) + u64(1 << 63) + b"k" * 16,
        "tensor_dims_2^63": gguf_file(ARCH, n_tensors=1, tensors=text("w") + u32(2) + u64(1 << 62) + u64(1 << 62)
                                 + u32(0) + u64(0), tail=b"\0" * 64),
        "tensor_offset_past_end": gguf_file(ARCH, n_tensors=1, tensors=text("w") + u32(1) + u64(8) + u32(0)
                                       + u64(1 << 40), tail=b"\0" * 64),
        "tensor_5_dims": gguf_file(ARCH, n_tensors=1, tensors=text("w") + u32(5) + u64(1) * 5 + u32(0) + u64(0),
                              tail=b"\0" * 64),
        "big_endian": b"GGUF" + struct.pack(">I", 3) + b"\0" * 16,
    }


def corpus() -> dict[str, bytes]:
    """Every named hostile file (what tests/runtime/gguf_corpus/ was written from, plus the fuzzers' finds)."""
    return {"string_array_2^60": huge_string_array(), "string_array_2^64-1": huge_string_array((1 << 64) - 1),
            "string_length_2^62": huge_string(), "string_length_2^64-1": huge_string((1 << 64) - 1),
            "nested_5000": deep_array(5000), "nested_9": deep_array(9), **huge_counts()}


# ------------------------------------------------------------------------------------------------------
# the named cases


def test_a_string_array_claiming_2_60_entries_is_refused_quickly(tmp_path):
    path = tmp_path / "vocab.gguf"
    path.write_bytes(huge_string_array())
    error = refused(path)
    assert "not a valid GGUF file" in error.message and "1152921504606846976 elements" in error.message


def test_a_string_claiming_2_62_bytes_is_refused(tmp_path):
    path = tmp_path / "name.gguf"
    path.write_bytes(huge_string())
    assert "4611686018427387904 bytes" in refused(path).message


def test_arrays_nested_5000_deep_are_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(deep_array(5000))
    assert f"more than {ggufmeta.MAX_DEPTH} deep" in refused(path).message


def test_arrays_nested_up_to_the_bound_are_read(tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(deep_array(ggufmeta.MAX_DEPTH))
    value = read_info(path).metadata["deep"]
    for _ in range(ggufmeta.MAX_DEPTH - 1):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []


@pytest.mark.parametrize("name", sorted(huge_counts()))
def test_counts_the_file_cannot_hold_are_refused(tmp_path, name):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(huge_counts()[name])
    refused(path)


def test_the_corpus_is_the_named_cases_and_every_file_is_refused():
    files = sorted(CORPUS.glob("*.gguf"))
    assert {p.stem for p in files} >= {n.replace("^", "pow") for n in corpus()}
    for path in files:
        refused(path)


def test_a_long_vocabulary_is_walked_within_the_bound_and_one_past_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ggufmeta, "MAX_WALKED", 10_000)
    ok, over = tmp_path / "ok.gguf", tmp_path / "over.gguf"
    for path, n in ((ok, 10_000), (over, 10_001)):
        path.write_bytes(gguf_file(ARCH, kv("tokenizer.ggml.tokens", ARRAY,
                                                                  u32(STRING) + u64(n)
                                                                  + text("t") * n)))
    assert read_info(ok).metadata["tokenizer.ggml.tokens"] is None  # walked, never decoded
    assert "more than 10000 strings" in refused(over).message


def test_value_types_agree_with_the_gguf_package():
    types = gguf.GGUFValueType
    assert (ggufmeta.STRING, ggufmeta.ARRAY) == (types.STRING, types.ARRAY)
    formats = {types.UINT8: "B", types.INT8: "b", types.UINT16: "H", types.INT16: "h", types.UINT32: "I",
               types.INT32: "i", types.FLOAT32: "f", types.BOOL: "?", types.UINT64: "Q", types.INT64: "q",
               types.FLOAT64: "d"}
    assert {k: v.format for k, v in ggufmeta._SCALARS.items()} == {int(k): "<" + v for k, v in formats.items()}


# ------------------------------------------------------------------------------------------------------
# fuzzing: mutations of a valid file, arbitrary bytes after a valid header


def _valid_gguf() -> bytes:
    """A small valid GGUF with one field of every kind the reader walks: scalars, strings, a short and a long
    string array, a short and a long scalar array, nested arrays, two tensors."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_file_type(15)
        writer.add_context_length(4096)
        writer.add_name("tiny")
        writer.add_chat_template("{{ messages }}")
        writer.add_token_list([f"t{i}" for i in range(ggufmeta.MAX_ARRAY + 3)])
        writer.add_token_scores([0.5] * (ggufmeta.MAX_ARRAY + 3))
        writer.add_array("test.short", ["a", "bc"])
        writer.add_array("test.ints", [1, 2, 3])
        writer.add_array("test.nested", [[1, 2], [3]])
        writer.add_bool("test.flag", True)
        writer.add_tensor("w", np.ones((2, 32), dtype=np.float32))
        writer.add_tensor("b", np.ones(32, dtype=np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def _count_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every count, length, type and offset field of ``data``, as the stock reader finds them."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        reader = gguf.GGUFReader(f.name)
        base = reader.data.ctypes.data
        found = set()
        for fld in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
            for part in fld.parts[:8]:  # the heads, not the 4099 lengths inside the vocabulary
                if part.dtype in (np.uint32, np.uint64, np.int32, np.int64) and part.size <= 4:
                    for i in range(part.size):
                        found.add((part.ctypes.data - base + i * part.itemsize, part.itemsize))
        return sorted(found)


VALID = _valid_gguf()
FIELDS = _count_fields(VALID)
HUGE = st.sampled_from([1 << 60, 1 << 62, (1 << 64) - 1, 1 << 63, (1 << 63) - 1, (1 << 64) - 2, 1 << 32,
                        (1 << 32) - 1, 0, 1, 9, ggufmeta.MAX_ARRAY + 1, len(VALID)]) | st.integers(0, (1 << 64) - 1)
NEGATIVE = st.integers(-(1 << 63), -1).map(lambda n: n % (1 << 64))  # an int64 below zero, as its bits


def fuzz(n: int):
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def only_invalid_input(path: Path) -> None:
    """read_info may return or raise one InvalidInputError line, nothing else, within the per-example bound."""
    start = time.monotonic()
    try:
        within(LIMIT, read_info, path)
    except InvalidInputError as e:
        assert "\n" not in e.message, e.message
    elapsed = time.monotonic() - start
    assert elapsed < PER_EXAMPLE_SECONDS, f"one example took {elapsed:.1f} s"


def test_the_fuzzed_file_has_fields_of_every_kind():
    assert 40 < len(FIELDS) < 120  # counts, lengths, types, dims and offsets of 14 keys and 2 tensors
    info = read_info_bytes(VALID)
    assert info.metadata["test.nested"] == [[1, 2], [3]] and info.metadata["tokenizer.ggml.tokens"] is None


def read_info_bytes(data: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return read_info(Path(f.name))


@fuzz(600)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), HUGE | NEGATIVE), min_size=1, max_size=3), st.data())
def test_any_count_or_length_set_to_any_value_is_one_error_line(tmp_path_factory, mutations, data):
    buf = bytearray(VALID)
    for (offset, width), value in mutations:
        buf[offset:offset + width] = value.to_bytes(8, "little")[:width]
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]  # and cut short somewhere
    path = tmp_path_factory.mktemp("mut") / "m.gguf"
    path.write_bytes(bytes(buf))
    only_invalid_input(path)


HEADER = st.builds(lambda version, tensors, keys: b"GGUF" + struct.pack("<IQQ", version, tensors, keys),
                   st.sampled_from([2, 3]) | st.integers(0, (1 << 32) - 1), st.integers(0, 8) | HUGE,
                   st.integers(0, 8) | HUGE)
FIELD = st.builds(lambda key, vtype, payload: text(key) + u32(vtype) + payload,
                  st.text(max_size=6), st.integers(0, 13), st.binary(max_size=40))


@fuzz(600)
@given(HEADER, st.lists(FIELD, max_size=4), st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_header_are_one_error_line(tmp_path_factory, header, fields, tail):
    path = tmp_path_factory.mktemp("arb") / "a.gguf"
    path.write_bytes(header + b"".join(fields) + tail)
    only_invalid_input(path)


@fuzz(200)
@given(st.integers(1, 20_000), st.sampled_from([UINT8, STRING, ARRAY, 13]),
       st.integers(0, (1 << 64) - 1) | st.just(1))
def test_nesting_of_any_depth_is_one_error_line(tmp_path_factory, depth, inner, count):
    path = tmp_path_factory.mktemp("deep") / "d.gguf"
    nest = (u32(ARRAY) + u64(1)) * (depth - 1)
    path.write_bytes(gguf_file(ARCH, kv("d", ARRAY, nest + u32(inner)
                                                           + u64(count) + b"\0" * 16)))
    only_invalid_input(path)


# ------------------------------------------------------------------------------------------------------
# only regular files are opened as models


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "model.gguf"
    os.mkfifo(path)
    yield path
    try:  # if a regression left a reader blocked on it, give it a writer and an end so its thread ends
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_is_refused_by_the_readers_without_blocking(fifo):
    for read in (ggufmeta.check_magic, read_info, fsutil.hash_file):
        with pytest.raises(InvalidInputError, match="is a FIFO"):
            within(LIMIT, read, fifo)


def test_a_device_is_refused_unopened():
    dev = Path("/dev/zero")
    assert stat.S_ISCHR(dev.stat().st_mode)
    for read in (ggufmeta.check_magic, read_info):
        with pytest.raises(InvalidInputError, match="is a character device"):
            within(LIMIT, read, dev)


def test_a_folder_and_a_socket_are_refused(tmp_path):
    import socket

    with pytest.raises(InvalidInputError, match="is a folder"):
        read_info(tmp_path)
    sock_path = tmp_path / "s.gguf"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(InvalidInputError, match="is a socket"):
            read_info(sock_path)


def test_open_regular_checks_what_it_opened_too(tmp_path, fifo):
    """The stat before the open and the fstat after it: a FIFO that takes a file's place in between is caught
    by the second (O_NONBLOCK keeps the open itself from waiting for a writer)."""
    regular = tmp_path / "r.gguf"
    regular.write_bytes(b"GGUF")
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if Path(path) == regular and not swapped:
            swapped.append(True)
            os.replace(fifo, regular)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "stat", stat_then_swap)
        with pytest.raises(InvalidInputError, match="is a FIFO"):
            within(LIMIT, fsutil.open_regular, regular)
    assert swapped


@pytest.mark.parametrize("link", [False, True])
def test_create_from_a_fifo_or_a_device_is_refused_quickly(tmp_path, fifo, link):
    store = Store(tmp_path / "store")
    for source, kind in ((f"FROM {fifo}\n", "FIFO"), ("FROM /dev/zero\n", "character device")):
        with pytest.raises(InvalidInputError, match=kind):
            within(LIMIT, create, store, parse_reference("localhost/x/m:v1"), source, tmp_path, link=link)
    assert not store.refs()


def test_an_adapter_fifo_is_refused_quickly(tmp_path, tiny_gguf, fifo):
    store = Store(tmp_path / "store")
    with pytest.raises(InvalidInputError, match="is a FIFO"):
        within(LIMIT, create, store, parse_reference("localhost/x/m:v1"), f"FROM {tiny_gguf}\nADAPTER {fifo}\n",
               tmp_path)
    assert not store.refs()


def test_the_store_never_ingests_a_fifo(tmp_path, fifo):
    store = Store(tmp_path / "store").init()
    for link in (False, True):
        with store.session() as pins, pytest.raises(InvalidInputError, match="is a FIFO"):
            within(LIMIT, store.ingest_file, fifo, pins, link=link)
        with store.session() as pins, pytest.raises(InvalidInputError, match="is a FIFO"):
            within(LIMIT, store.adopt_file, fifo, pins, allow_link=link)
    assert not list(store.ingest_dir.glob("ingest-*")) and not list(store.blobs_dir.iterdir())


def test_create_from_a_hostile_gguf_is_one_line_and_stores_nothing(tmp_path):
    store = Store(tmp_path / "store")
    for name, data in corpus().items():
        path = tmp_path / f"{name.replace('^', 'pow')}.gguf"
        path.write_bytes(data)
        with pytest.raises(ModelpkgError) as caught:
            within(LIMIT, create, store, parse_reference("localhost/x/m:v1"), f"FROM {path}\n", tmp_path)
        assert "not a valid GGUF file" in caught.value.message and "\n" not in caught.value.message, name
    assert not store.refs()
