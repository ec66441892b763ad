"""Read the metadata modelpkg needs from a GGUF file: a bounded walker of the header, total on any input.

Adapter: file I/O. Imports ``modelpkg.core.errors`` and ``modelpkg.base.fsutil``; the ``gguf`` package (the
llama.cpp project's, the reference for the value and tensor types) is imported inside the functions, so
commands that do not read GGUF files start fast.

The file is hostile input (Ollama's CVE-2025-0315/0312/0317: a string array claiming 2^60 entries, a string
claiming 2^62 bytes, arrays nested thousands deep). So the header is walked by ``_Walker``, not by
``gguf.GGUFReader`` (which loops over whatever count the file claims, recurses once per nesting level and maps
the file, where a file truncated while mapped is a SIGBUS): every count and length is checked against the
bytes left in the file before anything is allocated or looped over, nesting is bounded, the work and the
decoded values are capped, and the file is read with ``pread`` through a 1 MiB window, never mapped. Every
malformed file is one ``InvalidInputError`` line. Only regular files are opened (``fsutil.open_regular``): a
FIFO or a device would block or never end.

Long arrays (the vocabulary, its scores and types) are skipped, never decoded: scalar arrays in O(1), string
arrays by walking the lengths only; the whole read of Gemma 3's 262k-token vocabulary takes well under a
second. ``tests/runtime/test_ggufmeta.py`` checks the fields against the stock reader.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpkg.base import fsutil
from modelpkg.core.errors import InvalidInputError, NotFoundError, StoreError

GGUF_MAGIC = b"GGUF"
# The bounds. Each is far above what a real model has (Gemma 3: 262k tokens, 40 keys, 236 tensors, a 2 KiB
# chat template; the largest vocabularies have about 1M entries) and keeps one read's work and memory small
# whatever the file claims. Every count is also checked against the bytes left in the file first.
MAX_ARRAY = 4096            # arrays longer than this (vocabularies, scores) are skipped, not decoded
MAX_DEPTH = 8               # arrays in arrays: llama.cpp's gguf.cpp refuses any (element type ARRAY is an
#                             "invalid GGUF type" there); gguf-py writes and reads them, so a few levels are read
MAX_KEYS = 1 << 16          # metadata keys
MAX_TENSORS = 1 << 20       # tensor infos
MAX_WALKED = 1 << 24        # elements of skipped string (or nested) arrays, walked one by one
MAX_DECODED = 64 << 20      # bytes of values decoded into Python (strings, plus 64 bytes an element)
MAX_NAME = 1 << 16          # bytes of a key or a tensor name
MAX_DIMS = 4                # GGML_MAX_DIMS: llama.cpp refuses tensors of more dimensions
_INT64_MAX = (1 << 63) - 1
_WINDOW = 1 << 20           # bytes read at a time

# general.file_type -> the quantization name llama.cpp and Ollama show (llama.h LLAMA_FTYPE_*)
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    file_type: str
    param_count: int
    size_label: str
    context_length: int | None
    chat_template: str | None
    model_type: str  # general.type: "model", "adapter", "mmproj", ...
    name: str
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def param_size(self) -> str:
        """A human parameter count like Ollama's ``model_type`` (``268.10M``, ``8.0B``)."""
        if self.param_count <= 0:
            return self.size_label
        for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if self.param_count >= scale:
                value = self.param_count / scale
                digits = 2 if value < 10 else 1 if value < 100 else 0
                return f"{value:.{digits}f}{unit}"
        return str(self.param_count)


def check_magic(path: Path) -> None:
    """Raise a clear error unless ``path`` is a readable regular file that starts with the GGUF magic."""
    fd = _open(path)
    try:
        head = os.pread(fd, 4, 0)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    _check_head(path, head)


def read_info(path: Path) -> GGUFInfo:
    """Read a GGUF file's metadata. Raises ``InvalidInputError`` (one line) for a file that is not valid GGUF,
    in bounded time and memory whatever the file claims."""
    fd = _open(path)
    try:
        _check_head(path, os.pread(fd, 4, 0))
        meta, param_count = _Walker(fd, os.fstat(fd).st_size).header()
    except Malformed as e:
        raise InvalidInputError(f"{path} is not a valid GGUF file: {e}",
                                "the file is damaged, or was not written by a GGUF writer") from e
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    arch = _text(meta.get("general.architecture"))
    ftype = meta.get("general.file_type")
    return GGUFInfo(
        architecture=arch,
        file_type=FILE_TYPES.get(ftype, f"unknown ({ftype})") if _is_int(ftype) else "",
        param_count=param_count,
        size_label=_text(meta.get("general.size_label")),
        context_length=_int_or_none(meta.get(f"{arch}.context_length")),
        chat_template=_str_or_none(meta.get("tokenizer.chat_template")),
        model_type=_text(meta.get("general.type")) or "model",
        name=_text(meta.get("general.name")),
        metadata=meta,
    )


def _open(path: Path) -> int:
    """A descriptor of the regular file ``path``; a FIFO, a device, a socket or a folder is refused unopened."""
    try:
        return fsutil.open_regular(path)
    except FileNotFoundError as e:
        raise NotFoundError(f"file not found: {path}") from e
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e


def _check_head(path: Path, head: bytes) -> None:
    if head != GGUF_MAGIC:
        raise InvalidInputError(
            f"{path} is not a GGUF file (it does not start with 'GGUF')",
            "FROM takes a .gguf file, a folder holding one, or a model name; convert other formats with "
            "llama.cpp's convert_hf_to_gguf.py",
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _is_int(value) else None


class Malformed(ValueError):
    """What is wrong with a GGUF file, in a few words; names from the file are shown escaped and cut short."""


def _shown(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:60] + "...")


# GGUF value types (the spec's numbers, as gguf.GGUFValueType has them; tests/runtime/test_gguf_hostile.py
# checks the two agree) -> the struct format of one element
_SCALARS = {0: struct.Struct("<B"), 1: struct.Struct("<b"), 2: struct.Struct("<H"), 3: struct.Struct("<h"),
            4: struct.Struct("<I"), 5: struct.Struct("<i"), 6: struct.Struct("<f"), 7: struct.Struct("<?"),
            10: struct.Struct("<Q"), 11: struct.Struct("<q"), 12: struct.Struct("<d")}
STRING, ARRAY = 8, 9
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_PER_ELEMENT = 64  # what one decoded element costs in Python, counted against MAX_DECODED


class _Walker:
    """Walks a GGUF header from just after the magic: metadata, then tensor infos. Every read goes through
    ``_take`` (bounds-checked against the file's size) or ``_skip``; nothing is looped over or allocated
    for a count before that count was checked against the bytes left and the caps above."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size, self.pos = fd, size, 4
        self.buf, self.base = b"", 0
        self.walked = 0
        self.decoded = 0

    # ----- bytes

    def _left(self) -> int:
        return self.size - self.pos

    def _take(self, n: int, what: str) -> bytes:
        if n > self._left():
            raise Malformed(f"{what} runs past the end of the file")
        start = self.pos - self.base
        if start + n > len(self.buf):
            self._fill(n, what)
            start = 0
        self.pos += n
        return self.buf[start:start + n]

    def _fill(self, n: int, what: str) -> None:
        data = os.pread(self.fd, max(n, min(_WINDOW, self._left())), self.pos)
        if len(data) < n:
            raise Malformed(f"{what} runs past the end of the file (it shrank while being read)")
        self.buf, self.base = data, self.pos

    def _skip(self, n: int, what: str) -> None:
        if n > self._left():
            raise Malformed(f"{what} runs past the end of the file")
        self.pos += n

    def _u32(self, what: str) -> int:
        return _U32.unpack(self._take(4, what))[0]

    def _u64(self, what: str) -> int:
        return _U64.unpack(self._take(8, what))[0]

    def _count(self, what: str, least: int, cap: int) -> int:
        """A count from the file, refused if its entries (``least`` bytes each at the very least) cannot fit
        in what is left of the file, or if it is over ``cap``."""
        n = self._u64(f"the {what} count")
        if n * least > self._left():
            raise Malformed(f"it claims {n} {what}, more than the {self._left()} bytes left in the file can hold")
        if n > cap:
            raise Malformed(f"it claims {n} {what}, more than the {cap} read")
        return n

    def _decoding(self, n: int, key: str) -> None:
        self.decoded += n
        if self.decoded > MAX_DECODED:
            raise Malformed(f"its metadata ({_shown(key)} and before) decodes to more than {MAX_DECODED >> 20} MiB")

    def _name(self, what: str) -> str:
        n = self._u64(f"the length of {what}")
        if n > MAX_NAME:
            raise Malformed(f"{what} claims {n} bytes (at most {MAX_NAME})")
        return self._take(n, what).decode("utf-8", "replace")

    # ----- the header

    def header(self) -> tuple[dict[str, Any], int]:
        """(metadata, parameter count)."""
        version = self._u32("the version")
        if version and version & 0xFFFF == 0:
            raise Malformed("it is big-endian; only little-endian GGUF is read (as llama.cpp does)")
        if version not in (2, 3):
            raise Malformed(f"version {version} is not supported (2 and 3 are)")
        n_tensors = self._u64("the tensor count")
        if n_tensors > MAX_TENSORS or n_tensors * 24 > self._left():  # a tensor info is 24 bytes at least
            raise Malformed(f"it claims {n_tensors} tensors, more than the file can hold or {MAX_TENSORS}")
        meta = self._metadata(self._count("metadata keys", 13, MAX_KEYS))  # a key is 13 bytes at least
        return meta, self._tensors(n_tensors, self._alignment(meta))

    def _metadata(self, n: int) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for _ in range(n):
            key = self._name("a metadata key")
            if key in meta:
                raise Malformed(f"the key {_shown(key)} appears twice")
            vtype = self._u32(f"the type of {_shown(key)}")
            if key == "general.alignment" and vtype != 4:
                raise Malformed("general.alignment is not a uint32")
            meta[key] = self._value(vtype, key, 0)
        return meta

    def _value(self, vtype: int, key: str, depth: int) -> Any:
        fmt = _SCALARS.get(vtype)
        if fmt is not None:
            return fmt.unpack(self._take(fmt.size, _shown(key)))[0]
        if vtype == STRING:
            n = self._u64(f"the length of {_shown(key)}")
            if n > self._left():
                raise Malformed(f"a string in {_shown(key)} claims {n} bytes, more than the {self._left()} left")
            self._decoding(n + _PER_ELEMENT, key)
            return self._take(n, _shown(key)).decode("utf-8", "replace")
        if vtype == ARRAY:
            return self._array(key, depth + 1)
        raise Malformed(f"{_shown(key)} has the unknown value type {vtype}")

    def _array_head(self, key: str, depth: int) -> tuple[int, int]:
        """An array's element type and count, both checked."""
        if depth > MAX_DEPTH:
            raise Malformed(f"{_shown(key)} nests arrays more than {MAX_DEPTH} deep")
        itype = self._u32(f"the element type of {_shown(key)}")
        fmt = _SCALARS.get(itype)
        least = fmt.size if fmt is not None else 8 if itype == STRING else 12 if itype == ARRAY else 0
        if not least:
            raise Malformed(f"{_shown(key)} is an array of the unknown value type {itype}")
        count = self._u64(f"the length of {_shown(key)}")
        if count * least > self._left():
            raise Malformed(f"{_shown(key)} claims {count} elements, more than the {self._left()} bytes left "
                            "in the file can hold")
        return itype, count

    def _array(self, key: str, depth: int) -> list | None:
        itype, count = self._array_head(key, depth)
        if count > MAX_ARRAY:  # a vocabulary, its scores or merges: skipped, never decoded
            self._skip_elements(itype, count, key, depth)
            return None
        self._decoding(count * _PER_ELEMENT, key)
        fmt = _SCALARS.get(itype)
        if fmt is not None:
            return list(struct.unpack(f"<{count}{fmt.format[1:]}", self._take(count * fmt.size, _shown(key))))
        return [self._value(itype, key, depth) for _ in range(count)]

    def _skip_elements(self, itype: int, count: int, key: str, depth: int) -> None:
        fmt = _SCALARS.get(itype)
        if fmt is not None:
            self._skip(count * fmt.size, _shown(key))
            return
        self.walked += count
        if self.walked > MAX_WALKED:
            raise Malformed(f"its arrays ({_shown(key)} and before) hold more than {MAX_WALKED} strings or arrays")
        if itype == STRING:
            self._skip_strings(count, key)
            return
        for _ in range(count):
            self._skip_elements(*self._array_head(key, depth + 1), key, depth + 1)

    def _skip_strings(self, count: int, key: str) -> None:
        """Walk ``count`` strings by their lengths only (the hot loop of a 262k-token vocabulary)."""
        pos, size, unpack = self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise Malformed(f"the strings of {_shown(key)} run past the end of the file")
            start = pos - self.base
            if start + 8 > len(self.buf):
                self.pos = pos
                self._fill(8, _shown(key))
                start = 0
            pos += 8 + unpack(self.buf, start)[0]
        if pos > size:
            raise Malformed(f"the strings of {_shown(key)} run past the end of the file")
        self.pos = pos

    # ----- tensors

    @staticmethod
    def _alignment(meta: dict[str, Any]) -> int:
        alignment = meta.get("general.alignment", 32)
        if alignment == 0 or alignment & (alignment - 1):
            raise Malformed(f"general.alignment {alignment} is not a power of two")
        return alignment

    def _tensors(self, n: int, alignment: int) -> int:
        """Read the tensor infos, check each tensor's data lies inside the file, and return the parameter count."""
        from gguf.constants import GGML_QUANT_SIZES  # the reference for the tensor types' block sizes

        sizes = {int(t): v for t, v in GGML_QUANT_SIZES.items()}
        names: set[str] = set()
        spans = []
        total = 0
        for _ in range(n):
            name = self._name("a tensor name")
            if name in names:
                raise Malformed(f"the tensor {_shown(name)} appears twice")
            names.add(name)
            n_dims = self._u32(f"the dimensions of {_shown(name)}")
            if n_dims > MAX_DIMS:
                raise Malformed(f"the tensor {_shown(name)} has {n_dims} dimensions (at most {MAX_DIMS})")
            dims = struct.unpack(f"<{n_dims}Q", self._take(8 * n_dims, _shown(name)))
            ttype = self._u32(f"the type of {_shown(name)}")
            offset = self._u64(f"the offset of {_shown(name)}")
            if ttype not in sizes:
                raise Malformed(f"the tensor {_shown(name)} has the unknown type {ttype}")
            block, type_size = sizes[ttype]
            elements = 1
            for d in dims:
                elements *= d
                if elements > _INT64_MAX:
                    raise Malformed(f"the tensor {_shown(name)} claims more than 2^63 elements")
            if dims and dims[0] % block:
                raise Malformed(f"the tensor {_shown(name)}'s rows ({dims[0]}) are not whole blocks of {block}")
            if offset % alignment:
                raise Malformed(f"the tensor {_shown(name)}'s offset {offset} is not a multiple of {alignment}")
            spans.append((name, offset, elements // block * type_size))
            total += elements
        data_start = -(-self.pos // alignment) * alignment
        for name, offset, nbytes in spans:
            if data_start + offset + nbytes > self.size:
                raise Malformed(f"the data of the tensor {_shown(name)} runs past the end of the file")
        return total
