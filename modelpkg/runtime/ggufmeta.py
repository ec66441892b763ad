"""Read the metadata modelpkg needs from a GGUF file, with the ``gguf`` package (the llama.cpp project's reader).

Adapter: file I/O. ``gguf`` (and numpy under it) is imported inside the functions, so commands that do not
read GGUF files start fast.

``gguf.GGUFReader`` parses every element of every metadata array in Python; a tokenizer with 262k tokens
takes about 20 s that way. ``_MetadataReader`` keeps the reader and its field layout but reads scalar
arrays as one numpy view and only skips over long string arrays (the vocabulary), which modelpkg never
needs: the whole read then takes well under a second. ``tests/test_ggufmeta.py`` checks that it gives the
same fields as the stock reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpkg.core.errors import InvalidInputError, NotFoundError, StoreError

GGUF_MAGIC = b"GGUF"
_MAX_ARRAY = 4096  # arrays longer than this (vocabularies, scores) are skipped, not decoded

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
    """Raise a clear error unless ``path`` is a readable file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError as e:
        raise NotFoundError(f"file not found: {path}") from e
    except IsADirectoryError as e:
        raise InvalidInputError(f"{path} is a folder, not a GGUF file") from e
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    if head != GGUF_MAGIC:
        raise InvalidInputError(
            f"{path} is not a GGUF file (it does not start with 'GGUF')",
            "FROM takes a .gguf file, a folder holding one, or a model name; convert other formats with "
            "llama.cpp's convert_hf_to_gguf.py",
        )


def read_info(path: Path) -> GGUFInfo:
    """Read a GGUF file's metadata. Raises ``InvalidInputError`` for a file that is not valid GGUF."""
    check_magic(path)
    try:
        reader = _reader_class()(str(path))
        meta = {name: _value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        param_count = sum(int(t.n_elements) for t in reader.tensors)
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{path} is not a valid GGUF file: {str(e)[:160]}") from e
    arch = str(meta.get("general.architecture") or "")
    ftype = meta.get("general.file_type")
    return GGUFInfo(
        architecture=arch,
        file_type=FILE_TYPES.get(ftype, f"unknown ({ftype})") if isinstance(ftype, int) else "",
        param_count=param_count,
        size_label=str(meta.get("general.size_label") or ""),
        context_length=_int_or_none(meta.get(f"{arch}.context_length")),
        chat_template=_str_or_none(meta.get("tokenizer.chat_template")),
        model_type=str(meta.get("general.type") or "model"),
        name=str(meta.get("general.name") or ""),
        metadata=meta,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _value(f: Any) -> Any:
    from gguf import GGUFValueType

    if f.types and f.types[0] == GGUFValueType.ARRAY and not f.data:
        return None  # a long string array that was skipped
    return f.contents()


_READER: type | None = None


def _reader_class() -> type:
    """Build the reader subclass once, on first use (gguf and numpy load lazily)."""
    global _READER
    if _READER is not None:
        return _READER
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class _MetadataReader(GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int):
            gtype = GGUFValueType(raw_type)
            if gtype != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype = GGUFValueType(raw_itype[0])
            count = int(alen[0])
            start = orig_offs + 12
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                values = self._get(start, nptype, count)
                if len(values) != count:
                    raise ValueError("array runs past the end of the file")
                data = [2] if count <= _MAX_ARRAY else []  # token scores and types are skipped too
                return 12 + int(values.nbytes), [raw_itype, alen, values], data, [gtype, itype]
            if itype != GGUFValueType.STRING or count <= _MAX_ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            view = memoryview(self.data)
            offs = start
            for _ in range(count):  # walk the lengths only: the vocabulary is never decoded
                offs += 8 + int.from_bytes(view[offs:offs + 8], "little")
            if offs > len(self.data):
                raise ValueError("string array runs past the end of the file")
            return offs - orig_offs, [raw_itype, alen], [], [gtype, itype]

    _READER = _MetadataReader
    return _READER
