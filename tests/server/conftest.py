"""A server over the real Gemma 3 270M weights with models of our own (Modelfile text per name), for the
compatibility tests: Gemma 3 270M has no template, so tools, thinking and insert come from TEMPLATEs.

``compat_server(models)`` (module scope) creates each model in a fresh store and serves it on a loopback port.
"""

from __future__ import annotations

import os
import threading

import pytest

from capabilities import require_module


@pytest.fixture(scope="module")
def compat_server(tmp_path_factory, gemma_gguf):
    """A factory: ``compat_server({"name": "TEMPLATE ...\\nPARAMETER ..."})`` -> the running server (FROM the
    Gemma weights is added to each Modelfile). Stopped at the end of the module."""
    require_module("llama_cpp")
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.server.app import make_server
    from modelpkg.store import Store

    started = []
    mp = pytest.MonkeyPatch()

    def start(models: dict[str, str]):
        root = tmp_path_factory.mktemp("compat")
        folder = root / "models"
        folder.mkdir()
        os.symlink(gemma_gguf, folder / "gemma.gguf")
        mp.setenv("MODELPKG_HOME", str(root / "home"))
        mp.setenv("MODELPKG_CONFIG_DIR", str(root / "config"))
        mp.delenv("MODELPKG_REGISTRY", raising=False)
        store = Store(config.home())
        for name, text in models.items():
            create(store, config.reference(name), "FROM ./gemma.gguf\n" + text, folder,
                   resolve_name=config.reference)
        server = make_server(store, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.close()
    mp.undo()
