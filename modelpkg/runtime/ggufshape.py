"""The few GGUF header fields the KV-cache estimate needs, read in milliseconds, and the memory available.

``ggufmeta`` reads a whole header through the ``gguf`` package (about 0.9 s with its imports, for Gemma 3);
a model load must not pay that. This reader walks the key/value section with plain ``struct`` reads and
stops as soon as it has the architecture's ``block_count`` and attention fields, which converters write
before the tokenizer's long arrays. Every count and length is checked against the file's size, and the walk
gives up (``None``: no estimate, the load goes ahead) past a fixed number of keys or array elements, so a
hostile header costs bounded time. ``available_memory`` reads ``/proc/meminfo`` (``MemAvailable``).

I/O adapter: imports ``modelpkg.core.limits`` only.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from modelpkg.core.limits import ModelShape

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_STRING, _ARRAY = 8, 9
MAX_KEYS = 4096
MAX_ELEMENTS = 1 << 20


class _Stop(Exception):
    """The header is not one this reader will walk (damaged, hostile or unusual): no estimate."""


class _Reader:
    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size, self.elements = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise _Stop()
        data = self.f.read(n)
        if len(data) != n:
            raise _Stop()
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def skip(self, n: int) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            raise _Stop()
        self.f.seek(n, os.SEEK_CUR)

    def value(self, kind: int):
        """A scalar's value; an array's values when short and of integers (else skipped: None)."""
        if kind == _STRING:
            return self.string()
        if kind in _INTS:
            return self.unpack(_INTS[kind])
        if kind in _FIXED:
            self.skip(_FIXED[kind])
            return None
        if kind != _ARRAY:
            raise _Stop()
        inner, count = self.unpack("<I"), self.unpack("<Q")
        self.elements += count
        if self.elements > MAX_ELEMENTS and inner == _STRING:
            raise _Stop()
        if inner in _INTS and count <= 4096:
            return [self.unpack(_INTS[inner]) for _ in range(count)]
        if inner in _FIXED:
            self.skip(_FIXED[inner] * count)
        elif inner == _STRING:
            for _ in range(count):
                self.skip(self.unpack("<Q"))
        else:
            raise _Stop()
        return None


def model_shape(path: Path) -> ModelShape | None:
    """The layer count and attention shape of the GGUF at ``path``, or None when they cannot be read."""
    try:
        with open(path, "rb") as f:
            return _walk(_Reader(f, os.fstat(f.fileno()).st_size))
    except (OSError, _Stop, struct.error, UnicodeDecodeError, OverflowError):
        return None


def _walk(r: _Reader) -> ModelShape | None:
    if r.take(4) != b"GGUF" or r.unpack("<I") < 2:
        return None
    r.unpack("<Q")  # tensors
    n_kv = r.unpack("<Q")
    arch, fields = "", {}
    for _ in range(min(n_kv, MAX_KEYS)):
        key = r.string().decode("utf-8")
        value = r.value(r.unpack("<I"))
        if key == "general.architecture" and isinstance(value, bytes):
            arch = value.decode("utf-8")
        elif arch and key.startswith(arch + "."):
            fields[key[len(arch) + 1:]] = value
            if "attention.key_length" in fields and "attention.value_length" in fields:
                shape = _shape(fields)
                if shape is not None:
                    return shape
        elif fields:  # past the architecture's keys (converters write them together)
            break
    return _shape(fields)


def _int(value) -> int | None:
    if isinstance(value, list):  # per-layer values (some architectures): the largest bounds the cache
        value = max(value) if value else None
    return value if isinstance(value, int) and value > 0 else None


def _shape(fields: dict) -> ModelShape | None:
    layers, heads = _int(fields.get("block_count")), _int(fields.get("attention.head_count"))
    kv_heads = _int(fields.get("attention.head_count_kv"))
    embd = _int(fields.get("embedding_length"))
    key, value = _int(fields.get("attention.key_length")), _int(fields.get("attention.value_length"))
    if not (layers and heads and kv_heads and (key or embd) and (value or embd)):
        return None
    if (key is None or value is None) and "attention.key_length" in fields:
        return None  # present but not a number: unusual, no estimate
    head_dim = embd // heads if embd else 0
    return ModelShape(n_layer=layers, n_head_kv=kv_heads, key_length=key or head_dim, value_length=value or head_dim)


def available_memory() -> int | None:
    """Bytes of memory available to a new process (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
