"""The layout of docs/concepts/architecture.md, kept: layers import downward only, no import circle, no private name
crosses a module, one lazy import of the engine.

The import graph here is built from the source with ``ast``: every ``import`` and ``from ... import`` of a tunekit
module, at module level or inside a function (a lazy import is still an import), but not those under
``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunekit"

# The function-local imports of tunekit modules that are there on purpose, each with its reason.
ALLOWED_LOCAL = {
    # The engine imports torch, transformers, peft and trl; `import tunekit` stays light until a Tuner needs it.
    ("tunekit.backends", "tunekit.backends.hf"),
    # The server needs FastAPI and uvicorn (the serve extra) and vLLM (CUDA); every other command works without them.
    ("tunekit.cli.serve", "tunekit.serving"),
    ("tunekit.cli.serve", "tunekit.serving.vllm_engine"),
}


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module
    target: str  # the tunekit module imported (a package's __init__ for names it defines)
    names: tuple[str, ...]  # the names imported from it (empty for `import x`)
    line: int
    local: bool  # inside a function


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for child in node.body for n in ast.walk(child)}
    return inside


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    return inside


def imports_of(root: Path = SRC) -> Iterator[Import]:
    """Every import of a tunekit module in the package at ``root``."""
    modules = _modules(root)
    package = root.name
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip, local = _type_checking_nodes(tree), _function_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == package:
                module = str(node.module)
                plain = [a.name for a in node.names if f"{module}.{a.name}" not in modules]
                for a in node.names:  # `from tunekit.x import y` where y is a submodule imports tunekit.x.y
                    if f"{module}.{a.name}" in modules:
                        yield Import(name, f"{module}.{a.name}", (), node.lineno, id(node) in local)
                if plain:  # names the module defines (a package imported for its submodules only is not counted)
                    yield Import(name, module, tuple(plain), node.lineno, id(node) in local)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == package:
                        yield Import(name, a.name, (), node.lineno, id(node) in local)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in _modules(root)}
    for imp in imports_of(root):
        if imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_cross_imports(root: Path = SRC) -> list[str]:
    """``from tunekit.x import _name`` in another module than ``tunekit.x`` (private *modules*, such as
    ``tunekit._fs``, are package-private and free to use)."""
    return [
        f"{imp.importer} (line {imp.line}) imports {name} from {imp.target}"
        for imp in imports_of(root)
        if imp.target != imp.importer
        for name in imp.names
        if _is_private(name)
    ]


# --- the tunekit tree -------------------------------------------------------------------------------------


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, f"import circles (each list imports itself around): {found}"


def test_no_private_name_crosses_a_module() -> None:
    found = private_cross_imports()
    assert not found, "make these names public in their module, or move the code that needs them there:\n" + "\n".join(
        found
    )


def test_function_local_imports_of_tunekit_are_the_allowed_ones() -> None:
    local = sorted({(imp.importer, imp.target) for imp in imports_of() if imp.local})
    unexpected = [pair for pair in local if pair not in ALLOWED_LOCAL]
    assert not unexpected, (
        f"function-local imports of tunekit modules {unexpected}: import them at the top of the module (a circle "
        "they would make is a layering problem: see docs/concepts/architecture.md)"
    )
    assert set(local) == ALLOWED_LOCAL, f"the allowed lazy imports changed: {local}; update ALLOWED_LOCAL"


def test_the_import_linter_contracts_are_kept() -> None:
    """The layers and the engine's protection, as ``lint-imports`` checks them (pyproject.toml)."""
    pytest.importorskip("importlinter")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_import_tunekit_loads_no_engine() -> None:
    code = (
        "import sys, tunekit\n"
        "heavy = {'torch', 'transformers', 'peft', 'trl', 'accelerate', 'datasets', 'tunekit.backends.hf'}\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the checks themselves catch what they are for ------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tunekit"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "from tunekit.b import f\n",
            "b.py": "def f():\n    from tunekit.c import g\n    return g\n",
            "c.py": "import tunekit.a\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tunekit.a import x\n",
        },
    )
    assert cycles(import_graph(root)) == [["tunekit.a", "tunekit.b", "tunekit.c"]]


def test_a_private_name_from_another_module_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "_secret = 1\n__all__ = []\n",
            "b.py": "from tunekit.a import _secret, __all__\nfrom tunekit import _fs\n",
            "_fs.py": "",
        },
    )
    assert private_cross_imports(root) == ["tunekit.b (line 1) imports _secret from tunekit.a"]
