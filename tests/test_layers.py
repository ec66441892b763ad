"""The architecture, checked: every import inside modelpkg points down the layers its folders name.

A module's layer is its folder (``modelpkg/<room>/...``); the rule is the package docstring's
(``modelpkg/__init__.py``): core <- base <- store, registry, runtime <- ops <- server <- cli. Checked for every
import a module makes, at the top or inside a function, and for every ``"modelpkg.x.y[:attr]"`` string (what
``importlib`` loads: the CLI's lazy commands). Rooms of one level never import each other (the store and the
registry meet only in ``ops``); within a room the imports form no cycle, and no module imports another's
private names. The checker itself is tested on small made-up packages below, so a broken rule cannot pass
unnoticed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "modelpkg"

LEVEL = {"core": 0, "base": 1, "store": 2, "registry": 2, "runtime": 2, "ops": 3, "server": 4, "cli": 5}
TOP = {"__init__": None, "__main__": "cli"}  # the package docstring and ``python -m modelpkg``
# what a room may not import even from the Python world: the core does no I/O, only the CLI draws with click,
# only the runner (and its split-GGUF loader) and the quantizer load llama.cpp
IO_MODULES = {"os", "pathlib", "io", "requests", "socket", "subprocess", "shutil", "filelock", "platformdirs",
              "llama_cpp", "gguf", "numpy", "click", "urllib3", "http", "threading", "time", "tempfile"}
ONLY_IN = {"click": {"cli"}, "llama_cpp": {"runtime.runner", "runtime.quantize", "runtime.splits"}}
LAZY_NAME = re.compile(r"^modelpkg(\.\w+)+(:\w+)?$")


@dataclass(frozen=True)
class Import:
    source: str  # dotted module doing the import
    target: str  # dotted module imported (a name from a package resolves to its submodule when there is one)
    names: tuple[str, ...] = ()  # names taken from it
    line: int = 0


def room(module: str) -> str | None:
    """``modelpkg.store.layout`` -> ``store``; the package's own top-level files map through ``TOP``."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if len(parts) == 2 and parts[1] in TOP:
        return TOP[parts[1]]
    return parts[1]


def modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every modelpkg import of one module: import statements anywhere in it, and importlib strings."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, (), node.lineno) for a in node.names if a.name.startswith("modelpkg")]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            if not base.startswith("modelpkg"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.append(Import(module, sub, (), node.lineno))
                else:
                    out.append(Import(module, base, (alias.name,), node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_NAME.match(node.value):
            target, _, attribute = node.value.partition(":")
            if target in known:  # "modelpkg.key"-like strings that name no module are file names, not imports
                out.append(Import(module, target, (attribute,) if attribute else (), node.lineno))
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def private_attributes(module: str, path: Path, known: set[str]) -> list[Import]:
    """``alias._name`` where ``alias`` is a modelpkg module imported into this one."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modelpkg"):
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    aliases[a.asname] = a.name
    return [Import(module, aliases[n.value.id], (n.attr,), n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def problems(package: Path) -> list[str]:
    """Every broken rule in ``package`` (a modelpkg tree), one line each."""
    found = modules(package)
    known = set(found)
    wrong = []
    graph: dict[str, set[str]] = {m: set() for m in found}
    for module, path in found.items():
        where = path.relative_to(package.parent)
        mine = room(module)
        if module != package.name and mine not in LEVEL:
            wrong.append(f"{where}: in no layer: put it in one of {sorted(LEVEL)}")
            continue
        for imp in imports(module, path, known) + private_attributes(module, path, known):
            theirs = room(imp.target)
            text = f"{where}:{imp.line} imports {imp.target}"
            private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if private and imp.target != module:
                wrong.append(f"{text}: private name {', '.join(private)}")
            if theirs is None or imp.target == module:
                continue  # the package root (__version__ and its docstring) is everyone's
            if theirs == mine:
                graph[module].add(imp.target)
            elif mine is None or LEVEL[theirs] > LEVEL[mine]:
                wrong.append(f"{text}: {mine} is below {theirs}")
            elif LEVEL[theirs] == LEVEL[mine]:
                wrong.append(f"{text}: {mine} and {theirs} never import each other (join them in ops)")
        for top in _outside_imports(path):
            allowed = ONLY_IN.get(top)
            inside = module.split(".", 1)[1] if "." in module else module
            if allowed is not None and not any(inside == a or inside.startswith(a + ".") for a in allowed):
                wrong.append(f"{where} imports {top}: only {', '.join(sorted(allowed))} may")
            if mine == "core" and top in IO_MODULES:
                wrong.append(f"{where} imports {top}: the core does no I/O")
    wrong += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return wrong


def _outside_imports(path: Path) -> set[str]:
    """The top-level names of every import from outside the package (``os``, ``click``, ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found - {"modelpkg"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_modelpkg_follows_its_layers():
    assert problems(PACKAGE) == []


def test_the_environment_is_read_in_one_module():
    """Every setting is read by ``modelpkg.base.config``, at call time; nowhere else looks at ``os.environ``."""
    wrong = []
    for module, path in modules(PACKAGE).items():
        if module == "modelpkg.base.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} reads os.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                    any(a.name in ("environ", "getenv") for a in node.names):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports os.environ")
    assert wrong == [], "read settings through modelpkg.base.config: " + "; ".join(wrong)


def test_the_package_docstring_states_the_same_order():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    positions = [doc.index(f"``{name}``") for name in ("core", "base", "store", "ops", "server", "cli")]
    assert positions == sorted(positions)
    assert set(LEVEL) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


# -- the checker on made-up packages: each rule catches what it is for ----------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "modelpkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(package).parents:
            (package / parent / "__init__.py").touch()
        path.write_text(text)
    return package


GOOD = {"core/digest.py": "import hashlib\n", "base/config.py": "from modelpkg.core import digest\n",
        "store/layout.py": "from modelpkg.base import config\nfrom modelpkg.core.digest import x\n",
        "registry/client.py": "from modelpkg.base.config import y\n",
        "ops/pull.py": "from modelpkg.store import layout\nfrom modelpkg.registry.client import RegistryClient\n",
        "ops/push.py": "from modelpkg.ops.pull import pull\n",
        "cli/app.py": "import click\nLAZY = {'pull': 'modelpkg.cli.registry:pull'}\n",
        "cli/registry.py": "from modelpkg.ops import push\n"}


def test_checker_passes_a_tree_that_follows_the_rule(tmp_path):
    assert problems(_tree(tmp_path, GOOD)) == []


@pytest.mark.parametrize(("files", "expected"), [
    ({"core/digest.py": "from modelpkg.store import layout\n"}, "core is below store"),
    ({"store/layout.py": "from modelpkg.registry.client import RegistryClient\n"}, "never import each other"),
    ({"registry/client.py": "def f():\n    import modelpkg.store.layout\n"}, "never import each other"),
    ({"base/config.py": "import importlib\nimportlib.import_module('modelpkg.ops.pull')\n"}, "base is below ops"),
    ({"ops/pull.py": "from modelpkg.ops.push import push\n"}, "import cycle"),
    ({"ops/push.py": "from modelpkg.ops.pull import _unique\n"}, "private name _unique"),
    ({"ops/push.py": "from modelpkg.ops import pull\npull._unique([])\n"}, "private name _unique"),
    ({"cli/registry.py": "from modelpkg.cli import app\n"}, "import cycle"),
    ({"core/digest.py": "import os\n"}, "the core does no I/O"),
    ({"ops/push.py": "import click\n"}, "only cli may"),
    ({"helpers.py": "x = 1\n"}, "in no layer"),
    ({"store/layout.py": "from ..registry import client\n"}, "never import each other"),
])
def test_checker_catches(tmp_path, files, expected):
    found = problems(_tree(tmp_path, {**GOOD, **files}))
    assert any(expected in line for line in found), found
