"""Every metadata key-value of a GGUF file, long arrays (the vocabulary, its scores) decoded too: what
``/api/show`` with ``verbose`` lists, as Ollama's ``llm.LoadModel(path, -1)`` does.

``ggufmeta.read_info`` skips arrays longer than 4096 items because nothing else needs them; this reader walks
the key-value section once (GGUF spec: ``gguf.md`` in ggml, "File Structure"), numeric arrays as one numpy
view, strings by their lengths, and stops before the tensor infos. Every length is checked against the bytes
left, so a hostile file gives an ``InvalidInputError``, never a huge allocation.

Adapter: file I/O. Imports ``modelpkg.core.errors``; numpy inside the function.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from modelpkg.core.errors import InvalidInputError, StoreError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9
MAX_KEYS = 1 << 16


class _Cursor:
    def __init__(self, data: Any):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> Any:
        if n < 0 or self.pos + n > len(self.data):
            raise InvalidInputError("the GGUF metadata runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return self.data[start:self.pos]

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY or depth > 2:
            raise InvalidInputError(f"unknown GGUF metadata type {kind}")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in _NUMPY:
            import numpy as np

            dtype = np.dtype(_NUMPY[item])
            return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
        if count > len(self.data) - self.pos:  # every item takes at least one byte
            raise InvalidInputError("a GGUF metadata array is longer than the file")
        return [self.value(item, depth + 1) for _ in range(count)]


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key-value pair of the GGUF file at ``path``, in file order."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data)  # slices of an mmap are bytes: nothing keeps it open
            if cursor.take(4) != b"GGUF":
                raise InvalidInputError(f"{path} is not a GGUF file")
            cursor.unpack("<I")  # version
            cursor.unpack("<Q")  # tensor count
            count = cursor.unpack("<Q")
            if count > MAX_KEYS:
                raise InvalidInputError(f"{path} claims {count} metadata keys")
            out: dict[str, Any] = {}
            for _ in range(count):
                key = cursor.string()
                out[key] = cursor.value(cursor.unpack("<I"))
            return out
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read {path}: {e}") from e
