"""The architecture's one rule, checked: imports point from the CLI down to the pure core, never back.

Pure core modules import nothing that does I/O; adapters import only the core; orchestration imports
adapters and core; only the CLI modules import click.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modelpkg"

CORE = {"errors", "digest", "reference", "mediatypes", "manifest", "modelfile", "template", "progress",
        "formats", "signing", "trust"}
ADAPTERS = {"config", "fsutil", "ggufmeta", "store", "registry", "runner", "keys", "ollama_store", "archive",
            "mirrors"}
ORCHESTRATION = {"create", "models", "pull", "push", "chat", "sign", "interop", "server"}
CLI = {"cli", "cli_progress", "cli_registry", "cli_run", "cli_sign", "cli_interop", "cli_serve", "cli_mirrors",
       "__main__"}
LEVEL = {**{m: 0 for m in CORE}, **{m: 1 for m in ADAPTERS}, **{m: 2 for m in ORCHESTRATION}, **{m: 3 for m in CLI}}
IO_MODULES = {"os", "pathlib", "requests", "socket", "subprocess", "shutil", "filelock", "platformdirs", "llama_cpp",
              "gguf", "numpy", "click", "urllib3", "http"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = rel.parts[0] if rel.parts[0] != "__init__" else None
        if name:
            yield name, path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "modelpkg":
                found |= {f"modelpkg.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def test_every_module_has_a_layer():
    unknown = {name for name, _ in _modules()} - set(LEVEL)
    assert not unknown, f"add these modules to a layer in tests/test_layers.py: {unknown}"


def test_imports_point_down():
    wrong = []
    for name, path in _modules():
        for imported in _imports(path):
            if imported.startswith("modelpkg."):
                target = imported.split(".")[1]
                if target in LEVEL and LEVEL[target] > LEVEL[name]:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not wrong, wrong


def test_the_core_does_no_io():
    wrong = []
    for name, path in _modules():
        if LEVEL.get(name) == 0:
            for imported in _imports(path):
                if imported.split(".")[0] in IO_MODULES:
                    wrong.append(f"{path.name} imports {imported}")
    assert not wrong, wrong


def test_only_the_cli_imports_click():
    wrong = [f"{path.name}" for name, path in _modules()
             if LEVEL.get(name) != 3 and any(i.split(".")[0] == "click" for i in _imports(path))]
    assert not wrong, wrong
