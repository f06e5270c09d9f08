"""The shape of the package: layers held by a tool, no import cycles, small modules, and
the one place each shared fact lives.

`lint-imports` (run by scripts/test.sh) checks the contracts in pyproject.toml; the
tests here check what a contract cannot say: that every subpackage is in the layers
contract, that no two modules import each other even inside one layer, and that the
few values hooks/qemu must keep as literals equal the package's own.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grimp
import pytest
from memlock_guard.support import defaults

from ..conftest import ROOT

PACKAGE = ROOT / "plugin" / "memlock_guard"
MAX_MODULE_LINES = 450
MAX_TOP_LEVEL_MODULES = 6


def _contracts() -> list[dict[str, object]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def test_the_layers_contract_names_every_subpackage_and_top_level_module():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"]  # type: ignore[attr-defined]
             for name in str(layer).replace(":", "|").split("|")}
    present = {p.name for p in PACKAGE.iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert present == named, "every subpackage and top-level module must sit in a layer"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if not w.startswith("memlock_guard"):
                continue
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

    for module in sorted(graph.modules):
        if module.startswith("memlock_guard") and module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other():
    # Function-level imports count (they run when the function does); imports under
    # `if TYPE_CHECKING:` do not (they never run).
    graph = grimp.build_graph("memlock_guard", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("memlock_guard.a", "memlock_guard.b", "memlock_guard.c"):
        graph.add_module(m)
    graph.add_import(importer="memlock_guard.a", imported="memlock_guard.b")
    graph.add_import(importer="memlock_guard.b", imported="memlock_guard.c")
    graph.add_import(importer="memlock_guard.c", imported="memlock_guard.a")
    assert _cycles(graph) == [["memlock_guard.a", "memlock_guard.b", "memlock_guard.c"]]


def test_the_top_level_holds_only_a_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_size_limit(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def _hook_literals() -> dict[str, object]:
    tree = ast.parse((ROOT / "hooks" / "qemu").read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and node.value is not None:
                out[target.id] = ast.literal_eval(node.value)
    return out


def test_the_hook_scripts_own_copies_equal_the_package_defaults():
    hook = _hook_literals()
    assert hook["POLICY_PATH"] == defaults.POLICY_PATH
    assert hook["MAX_POLICY_BYTES"] == defaults.MAX_POLICY_BYTES
    assert hook["SALVAGE_ON_ERROR"] == defaults.SALVAGE_ON_ERROR
    assert hook["FACTS"] == defaults.FACTS_CACHE
    assert hook["CACHE"] == defaults.DECISION_CACHE
