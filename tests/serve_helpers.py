"""A ``modelpkg serve`` on loopback over a store holding Gemma 3 270M as the example models, for the tests of
the API surfaces (Anthropic's, OpenAI's Responses, logprobs). Used by module-scoped fixtures::

    @pytest.fixture(scope="module")
    def served(tmp_path_factory, gemma_gguf):
        with serving(tmp_path_factory, gemma_gguf) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from capabilities import require_module

EXAMPLES = Path(__file__).resolve().parents[1] / "Modelfile.examples"


@contextlib.contextmanager
def serving(tmp_path_factory, gemma_gguf: Path, names: tuple[str, ...] = ("gemma3-base", "gemma3-chat"),
            modelfiles: Mapping[str, str] | None = None, **server_options) -> Iterator:
    """A running server (``.url``, ``.app``) over a fresh store with ``names`` created from the examples and
    each of ``modelfiles`` (name -> Modelfile text; the weights are ``./gemma3-270m-q4_k_m.gguf``)."""
    require_module("llama_cpp")
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.server.app import make_server
    from modelpkg.store import Store

    root = tmp_path_factory.mktemp("serve")
    folder = root / "examples"
    folder.mkdir()
    os.symlink(gemma_gguf, folder / "gemma3-270m-q4_k_m.gguf")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPKG_HOME", str(root / "home"))
    mp.setenv("MODELPKG_CONFIG_DIR", str(root / "config"))
    mp.delenv("MODELPKG_REGISTRY", raising=False)
    mp.delenv("MODELPKG_TEST_RUNNER_FAULT", raising=False)
    store = Store(config.home())
    texts = {name: (EXAMPLES / f"{name}.Modelfile").read_text() for name in names}
    for name, text in {**texts, **(modelfiles or {})}.items():
        create(store, config.reference(name), text, folder, resolve_name=config.reference)
    server = make_server(store, "127.0.0.1", 0, **server_options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close()
        mp.undo()


# A TEMPLATE that takes tools (its ``.Tools``) and writes calls its own way (``tool_name``, ``parameters``), for
# the Gemma weights: the 270M model cannot be trusted to call a tool, so the tests force calls with tool_choice
TOOL_MODELFILE = '''TEMPLATE """{{- if .Tools }}Tools: {{ .Tools }}
{{ end }}{{- range .Messages }}<{{ .Role }}>{{ if .ToolCalls }}Action: ```json
[{{ range .ToolCalls }}{"tool_name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}]
```{{ else }}{{ .Content }}{{ end }}
{{ end }}<assistant>"""
PARAMETER num_ctx 2048
'''
WEATHER_SCHEMA = {"type": "object", "required": ["location", "format"], "properties": {
    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
    "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME_SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
REQUIRED = {"get_current_weather": {"location", "format"}, "get_time": {"city"}}
