"""GGUF metadata through the gguf package, and the fast path that skips the vocabulary."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from conftest import make_gguf
from modelpkg.core.errors import InvalidInputError, NotFoundError
from modelpkg.runtime.ggufmeta import read_info


def _with_vocab(path, n=10_000):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(15)
    writer.add_context_length(4096)
    writer.add_token_list([f"tok{i}" for i in range(n)])
    writer.add_token_scores([float(i) for i in range(n)])
    writer.add_array("test.short", [1, 2, 3])
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("w", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_same_fields_as_the_stock_reader(tmp_path):
    path = _with_vocab(tmp_path / "v.gguf")
    info = read_info(path)
    stock = gguf.GGUFReader(str(path))
    for name, field in stock.fields.items():
        if name.startswith("GGUF.") or name.startswith("tokenizer.ggml."):
            continue
        assert info.metadata[name] == field.contents(), name
    assert info.metadata["tokenizer.ggml.tokens"] is None  # long arrays are skipped, not decoded
    assert info.file_type == "Q4_K_M" and info.context_length == 4096 and info.chat_template == "{{ messages }}"
    assert info.param_count == 32


def test_adapter_type_and_arch(tmp_path):
    info = read_info(make_gguf(tmp_path / "a.gguf", arch="gemma3", model_type="adapter"))
    assert (info.architecture, info.model_type) == ("gemma3", "adapter")


def test_not_gguf_and_missing(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InvalidInputError, match="not a GGUF file"):
        read_info(bad)
    with pytest.raises(NotFoundError):
        read_info(tmp_path / "missing.gguf")


def test_truncated_gguf_is_a_clear_error(tmp_path):
    path = _with_vocab(tmp_path / "v.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidInputError, match="not a valid GGUF file"):
        read_info(cut)
