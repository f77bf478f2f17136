"""The package's shape: no import cycle, nothing below the CLI imports it, the torch-free modules stay torch-free."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "skinaug"
# never import torch, directly or through another skinaug module: the onnx backend and `--help` run without it
TORCH_FREE = ("skinaug.spec", "skinaug.sampling", "skinaug.backends", "skinaug.backends.base", "skinaug.backends.onnx",
              "skinaug.backends.onnx_runtime", "skinaug.storage.fs", "skinaug.errors", "skinaug.distributed",
              "skinaug.storage.modeldir", "skinaug.storage.codefile", "skinaug.generation.encode_decode",
              "skinaug.generation.commands", "skinaug.storage.writer", "skinaug.runtime", "skinaug.cli",
              "skinaug.reports.preview", "skinaug.reports.inspection", "skinaug.scores.sets", "skinaug.generation.sampler",
              "skinaug.data.layout")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The skinaug modules `path` imports anywhere in it, function bodies included (a lazy import is still a
    dependency): `from .x import y` counts as x.y when y is a module, else as x."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names}
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None (depth-first, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_reads_relative_lazy_and_submodule_imports():
    graph = import_graph()
    assert "skinaug.backends.torch" in graph["skinaug.backends"]  # inside open_backend
    assert "skinaug.version" in graph["skinaug.storage.modeldir"]  # from ..version import __version__
    assert "skinaug.backends.base" in graph["skinaug.backends.onnx_runtime"]  # from .base import ...
    assert "skinaug.storage.fs" in graph["skinaug.storage.modeldir"]  # from . import fs as skinaug_io


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_nothing_below_the_command_line_imports_it():
    offenders = {module for module, targets in import_graph().items()
                 if any(t == "skinaug.cli" or t.startswith("skinaug.cli.") for t in targets)
                 and not (module.startswith("skinaug.cli") or module == "skinaug.__main__")}
    assert offenders == set()


def test_the_torch_free_modules_import_without_torch():
    code = f"import sys; import {', '.join(TORCH_FREE)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_one_distributed_process_needs_no_torch():
    code = ("import sys; from skinaug.distributed import Distributed; d = Distributed(); d.barrier(); "
            "print(d.is_main, d.world_size, d.broadcast_object(3), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1", "3", "False"]


def requirement_names(requirements: list[str]) -> set[str]:
    """The distributions `requirements` name, without versions, markers or extras (`skinaug[torch]` is skinaug)."""
    import re

    return {re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower() for requirement in requirements}


def test_the_core_install_holds_no_torch_and_the_test_extra_pulls_it():
    import pytest

    from skinaug.errors import EXTRAS

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    core = requirement_names(project["dependencies"])
    assert core == {"numpy", "pillow", "h5py", "scipy", "typer", "rich", "tqdm"}
    assert requirement_names(extras["torch"]) == {"torch", "safetensors", "monai", "pytorch-msssim", "skinaug"}
    assert "skinaug[torch]" in extras["test"] and "skinaug[classic]" in extras["torch"]
    # each optional package that skinaug names in a missing-package line is installed by the extra it names
    distribution = {"pytorch_msssim": "pytorch-msssim"}
    for package, extra in EXTRAS.items():
        assert distribution.get(package, package) in requirement_names(extras[extra]), (package, extra)
