"""The project's layout as tests: one import package, floors that import only downwards, rooms
inside `hpsearch.search` that import only downwards, and no import cycle anywhere (imports
inside functions and type-only imports count: both are dependencies a reader must know of).

Floors, bottom up: rundir; models; data_pipeline; analysis (reads run directories: never
search, Ray or torch); search; then benchmarks. Inside search: errors; experiment (what the
user asks for: no torch, no Ray); storage; console; trial (what a Ray worker runs); integrations;
driver; cli. A room may import the rooms below it, never one above."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("hpsearch", "benchmarks")

# Each module's room is the longest prefix listed here; a room may import its own modules and
# the rooms of a lower rank (the same rank: neither imports the other).
RANKS = {
    "hpsearch": 0,  # the package's __init__ / __main__ (below: __main__ is ranked with cli)
    "hpsearch.experiments": 0,  # data files only
    "hpsearch.rundir": 1,
    "hpsearch.models": 2,
    "hpsearch.data_pipeline": 3,
    "hpsearch.analysis": 4,
    "hpsearch.search": 5,  # search/__init__
    "hpsearch.search.errors": 5,
    "hpsearch.search.experiment": 6,
    "hpsearch.search.storage": 7,
    "hpsearch.search.console": 8,
    "hpsearch.search.trial": 9,
    "hpsearch.search.integrations": 10,
    "hpsearch.search.driver": 11,
    "hpsearch.search.cli": 12,
    "hpsearch.__main__": 13,
    "benchmarks": 14,
}


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its body: at the top, inside functions and
    under `if TYPE_CHECKING:` alike."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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
    found.discard("")
    found.discard(name)
    return found


def _third_party(path: Path) -> set[str]:
    """Top-level names of everything `path` imports, anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def room(module: str) -> str:
    while module not in RANKS:
        module = module.rpartition(".")[0]
    return module


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


def test_the_graph_sees_imports_inside_functions_and_type_only_imports():
    graph = import_graph()
    assert "hpsearch.models.convnet" in graph["hpsearch.models.factory"]  # inside build() only
    assert "hpsearch.search.experiment.schema" in graph["hpsearch.search.trial.inputs"]  # typing


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_room():
    for module in _modules():
        assert room(module) in RANKS, module
    top = {p.name for p in (REPO / "hpsearch").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {f"hpsearch.{n}" for n in top} <= set(RANKS), "a new sub-package needs its rank"


def test_no_import_cycles_between_project_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_arrow_goes_up_a_floor_or_across_rooms():
    bad = []
    for module, targets in import_graph().items():
        src = room(module)
        for target in targets:
            dst = room(target)
            if dst != src and RANKS[dst] >= RANKS[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layout (see docs/layout.md):\n  " + "\n  ".join(bad)


def test_analysis_never_imports_search_ray_or_torch():
    for module, path in _modules().items():
        if room(module) != "hpsearch.analysis":
            continue
        assert not {t for t in import_graph()[module] if t.startswith("hpsearch.search")}, module
        assert not _third_party(path) & {"ray", "torch", "torchvision", "torchmetrics"}, module


def test_the_experiment_room_imports_neither_torch_nor_ray():
    """What the user asks for is checked without the heavy stack: the experiment room's
    modules name neither library, and loading and validating every packaged experiment's
    space (shape arithmetic included) leaves both unimported."""
    for module, path in _modules().items():
        if room(module) == "hpsearch.search.experiment":
            assert not _third_party(path) & {"ray", "torch", "torchvision"}, module
    code = (
        "import sys\n"
        "from hpsearch.search.experiment.files import packaged_experiments, packaged_path\n"
        "from hpsearch.search.experiment.schema import load_experiment\n"
        "from hpsearch.search.experiment.space import check_space\n"
        "for name in packaged_experiments():\n"
        "    exp = load_experiment(packaged_path(name))\n"
        "    if not any(a.startswith('tv/') for a in (exp.search.space.arch.values() or [])):\n"
        "        check_space(exp.search.space, image_size=exp.data.image_size, num_classes=10)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_trial_never_imports_the_driver_the_cli_or_the_integrations():
    for module, targets in import_graph().items():
        if room(module) == "hpsearch.search.trial":
            above = {t for t in targets if RANKS[room(t)] > RANKS["hpsearch.search.trial"]}
            assert not above, (module, above)


def test_search_kfold_and_the_warmup_never_import_each_other():
    """They meet only in the trial's inputs (the hand-offs) and driver.study (the chaining)."""
    graph = import_graph()
    parts = {
        "hpsearch.search.driver.tuner",
        "hpsearch.search.driver.kfold",
        "hpsearch.search.trial.warmup",
    }
    for module in parts:
        assert not graph[module] & parts, (module, graph[module] & parts)


@pytest.mark.parametrize("generic", ["models", "search", "analysis", "data_pipeline", "rundir"])
def test_no_module_imports_a_generic_top_level_name(generic):
    for module, path in _modules().items():
        assert generic not in _third_party(path), f"{module} imports top-level {generic!r}"


def test_the_driver_reaches_ray_without_torch():
    """torch takes seconds to import and only trials need it: validating an experiment (its
    architectures included) and the modules that start Ray, Tune and export do not import it,
    so the driver's start does not wait for it (a same-init warm-up still does)."""
    code = (
        "import sys\n"
        "from hpsearch.search.experiment.files import resolve_experiment as resolve\n"
        "from hpsearch.search.experiment.schema import load_experiment\n"
        "from hpsearch.search.driver.validate import check_experiment\n"
        "import hpsearch.search.driver.tuner, hpsearch.search.driver.study\n"
        "import hpsearch.search.driver.tune_setup, hpsearch.search.driver.export\n"
        "import hpsearch.search.cli\n"
        "exp = load_experiment(resolve('demo'))\n"
        "check_experiment(exp)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'torchmetrics') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _imports_inside_functions(path: Path) -> list[tuple[ast.stmt, list[str]]]:
    """(import statement, the lines above it up to the function's previous statement) for
    every import inside a function of `path`."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        inner = [f for f in ast.walk(fn) if f is not fn and isinstance(f, ast.FunctionDef)]
        nested = {id(n) for f in inner for n in ast.walk(f)}  # counted with their own function
        statements = [n for n in ast.walk(fn) if isinstance(n, ast.stmt) and id(n) not in nested]
        for node in statements:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append((node, lines))
    return found


def _has_reason(node: ast.stmt, lines: list[str]) -> bool:
    """A comment on the import's own lines, or above it with only imports and blank lines
    between (one comment may explain a block of imports)."""
    if any("#" in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1)):
        return True
    i = node.lineno - 2
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if not text or text.startswith(("import ", "from ", ")")) or text.endswith(","):
            i -= 1
            continue
        return False
    return False


def test_imports_inside_functions_say_why():
    """Imports belong at the top of a module; one inside a function is for a measured
    start-up cost (torch ~2.5 s, Ray Tune ~0.8 s, scikit-learn ~0.8 s on the test machines) or
    an optional extra, and a comment says which."""
    bare = []
    for module, path in _modules().items():
        if not module.startswith("hpsearch"):  # benchmarks are scripts: their own choice
            continue
        for node, lines in _imports_inside_functions(path):
            if not _has_reason(node, lines):
                bare.append(
                    f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
                )
    assert not bare, "imports inside functions without a comment saying why:\n  " + "\n  ".join(
        bare
    )
