"""The package's layering, read from its import statements: the frozen runtime never reaches
the trainable model, the modules import without a cycle, and none grows past its size limit."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("dqt_triton", "kernels", "reference")
MAX_MODULE_LINES = 600
MAX_DQTMODEL_LINES = 300


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `name` imports at run time (imports under `if TYPE_CHECKING:` and
    inside functions are left out: they run later, not when the module loads)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if package.startswith(("kernels", "reference")):  # installed inside the dqt_triton namespace
        package = "dqt_triton." + package
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ([node] if isinstance(node, (ast.Import, ast.ImportFrom)) else []):
            if isinstance(sub, ast.Import):
                targets = [a.name for a in sub.names]
            else:
                base = package.split(".")
                if sub.level:
                    base = base[:len(base) - (sub.level - 1)]
                    prefix = ".".join(base + ([sub.module] if sub.module else []))
                else:
                    prefix = sub.module or ""
                # `from pkg import mod` depends on the submodule; `from mod import name` on the module
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in sub.names]
            # kernels/ and reference/ are installed as dqt_triton.kernels and dqt_triton.reference
            targets = [t.removeprefix("dqt_triton.") if t.startswith(("dqt_triton.kernels", "dqt_triton.reference"))
                       else t for t in targets]
            # The top-level packages' __init__ files only re-export the public API: not a layer.
            found.update(t for t in targets if t in known and t != name and t not in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_frozen_runtime_never_imports_the_trainable_model():
    graph = _graph()
    for runtime in ("dqt_triton.runtime", "dqt_triton.program", "dqt_triton.model_file"):
        reached = _reachable(graph, runtime)
        trainable = reached & {"dqt_triton.model", "dqt_triton.objective", "dqt_triton.convert",
                               "dqt_triton.training", "dqt_triton.controller", "dqt_triton.calibration"}
        assert not trainable, f"{runtime} reaches {sorted(trainable)}"


def test_kernels_and_reference_stand_apart_from_the_package():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(("kernels", "reference")):
            assert not any(d.startswith("dqt_triton") for d in deps), (name, deps)
        if name.startswith("reference"):
            assert not any(d.startswith("kernels") for d in deps), (name, deps)


def test_no_import_cycle_between_modules():
    graph = _graph()
    for name in graph:
        assert name not in _reachable(graph, name), f"{name} imports itself through {sorted(graph[name])}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_the_size_limit(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines (limit {MAX_MODULE_LINES})"


def test_dqtmodel_stays_small():
    tree = ast.parse((ROOT / "dqt_triton" / "model.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DQTModel")
    lines = cls.end_lineno - cls.lineno + 1
    assert lines <= MAX_DQTMODEL_LINES, f"DQTModel: {lines} lines (limit {MAX_DQTMODEL_LINES})"
