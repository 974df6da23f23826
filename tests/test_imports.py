"""The project's import graph: no cycles between modules (imports inside functions count), and
packages depend on each other only in the documented direction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rundir", "models", "data_pipeline", "search", "analysis", "experiments", "benchmarks")
# What each package may import from the others (DESIGN: search -> models, data_pipeline;
# analysis reads files only, through rundir and search's pure dimension table).
ALLOWED = {
    "rundir": set(),
    "models": set(),
    "experiments": set(),
    "data_pipeline": {"rundir"},
    "search": {"rundir", "models", "data_pipeline", "analysis", "experiments"},
    "analysis": {"rundir", "search.dimensions"},
    "benchmarks": {"rundir", "models", "data_pipeline", "search", "analysis"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its body (not under `if TYPE_CHECKING:`,
    which never runs)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(resolve(alias.name) or "")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(resolve(f"{base}.{alias.name}") or resolve(base) or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard("")
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "models" in graph["search.space"]  # imported inside model_config only
    assert "search.trainable" in graph["search.warmup"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_project_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_depend_only_in_the_documented_direction(package):
    bad = {}
    for module, targets in import_graph().items():
        if module.split(".")[0] != package:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top == package:
                continue
            if not any(
                target == a or target.startswith(a + ".") or top == a for a in ALLOWED[package]
            ):
                bad.setdefault(module, []).append(target)
    assert not bad, f"{package} imports outside its allowed dependencies: {bad}"


def test_search_kfold_and_the_warmup_never_import_each_other():
    """They meet only in search.inputs (the hand-offs) and search.study (the chaining)."""
    graph = import_graph()
    parts = {"search.tuner", "search.kfold", "search.warmup"}
    for module in parts:
        assert not graph[module] & parts, (module, graph[module] & parts)


def test_the_driver_reaches_ray_without_torch():
    """torch takes seconds to import and only trials need it: validating an experiment (its
    architectures included) and the modules that start Ray, Tune and export do not import it,
    so the driver's start does not wait for it (a same-init warm-up still does)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from search.experiment_files import resolve_experiment as resolve\n"
        "from search.schema import load_experiment\n"
        "from search.validate import check_experiment\n"
        "import search.tuner, search.study, search.tune_setup, search.export, search.cli\n"
        "exp = load_experiment(resolve('demo'))\n"
        "check_experiment(exp)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'torchmetrics') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
