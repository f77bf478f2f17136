"""The package's shape: its layers (a module imports only from its own layer and the ones below it), no import cycle,
nothing below the CLI imports it, the torch-free modules stay torch-free, no module imports a moved module's old
name, and the size limits: no function over 60 lines, no public function outside cli/ with more than 12 parameters,
no two modules of one package sharing a 7-letter name stem, the list of generating methods defined once."""

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


# The layers, top to bottom. A module belongs to the layer of the longest entry that names it or a package above it
# (`skinaug` itself only by name). Where the code placed a package differently from a plain reading:
# - data sits below storage: the output claim reads the image list given on stdin (storage.fs -> data.scan), and
#   data.layout (what a generated dataset is) is what the dataset reader reads;
# - the networks sit below storage: the model directory builds the networks it stores (ModelDir.load_vqvae/load_prior);
# - training sits above generation: the prior trainer encodes its data (generation.encode_decode);
# - backends.base, the torch-free interfaces the networks and the backends implement, sits with the base modules.
LAYERS = (
    ("cli", ("skinaug.cli", "skinaug.__main__")),
    ("api", ("skinaug", "skinaug.api")),
    ("studies", ("skinaug.studies", "skinaug.recipes")),
    ("scores", ("skinaug.scores",)),
    ("reports", ("skinaug.reports",)),
    ("training", ("skinaug.training",)),
    ("generation", ("skinaug.generation",)),
    ("export", ("skinaug.export",)),
    ("backends", ("skinaug.backends", "skinaug.onnx")),  # skinaug.onnx: the old package, its constants re-exported
    ("baselines", ("skinaug.baselines",)),
    ("storage", ("skinaug.storage",)),
    ("networks", ("skinaug.vqvae", "skinaug.priors")),
    ("data", ("skinaug.data",)),
    ("base", ("skinaug.errors", "skinaug.spec", "skinaug.sampling", "skinaug.naming", "skinaug.runtime",
              "skinaug.distributed", "skinaug.limits", "skinaug.version", "skinaug.moved", "skinaug.backends.base")),
)


def layer_of(module: str) -> int | None:
    """The index in LAYERS (0: the top) of the layer `module` belongs to, None when no entry names it."""
    best, found = -1, None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            names_it = module == entry or (entry != "skinaug" and module.startswith(entry + "."))
            if names_it and len(entry) > best:
                best, found = len(entry), index
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str] | None) -> set[str]:
    """The skinaug modules `path` imports anywhere in it, function bodies included (a lazy import is still a
    dependency): `from .x import y` counts as x.y when y is a module, else as x. modules None: every name imported,
    module or not, as x and x.y."""
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
            if modules is None:
                found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
            else:
                found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                          for alias in node.names}
    return found if modules is None else {module for module in found if module in modules and module != name}


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


def test_every_module_has_a_layer():
    assert [module for module in import_graph() if layer_of(module) is None] == []


def test_the_layers_name_what_they_hold():
    assert LAYERS[layer_of("skinaug.storage.modeldir")][0] == "storage"
    assert LAYERS[layer_of("skinaug.backends.base")][0] == "base"
    assert LAYERS[layer_of("skinaug.backends.torch")][0] == "backends"
    assert LAYERS[layer_of("skinaug")][0] == "api" and LAYERS[layer_of("skinaug.spec")][0] == "base"


def test_no_module_imports_from_a_higher_layer():
    offenders = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                 for module, targets in sorted(import_graph().items()) for target in sorted(targets)
                 if layer_of(target) < layer_of(module)]
    assert offenders == []


def test_no_module_imports_a_moved_name():
    """The old names (skinaug.moved.MOVED, and the constants' old package skinaug.onnx) are for other people's code."""
    from skinaug.moved import MOVED

    old = set(MOVED) | {"skinaug.onnx"}
    offenders = {module_name(path): sorted(imported_modules(path, None) & old) for path in PACKAGE.rglob("*.py")}
    assert {module: names for module, names in offenders.items() if names and module != "skinaug.onnx"} == {}


def test_each_old_name_is_its_new_module_and_says_where_it_went():
    code = ("import warnings, importlib; warnings.simplefilter('error'); from skinaug.moved import MOVED\n"
            "for old, new in MOVED.items():\n"
            "    try:\n        importlib.import_module(old); print('silent', old)\n"
            "    except DeprecationWarning as warning:\n        assert new in str(warning), warning\n"
            "warnings.simplefilter('ignore')\n"
            "for old, new in MOVED.items():\n    assert importlib.import_module(old) is importlib.import_module(new), old\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


def functions(path: Path):
    """(qualified name, node) of every function and method in `path`, nested ones included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), "")


def test_no_function_is_longer_than_60_lines():
    long = {f"{module_name(path)}.{name}": node.end_lineno - node.lineno + 1
            for path in PACKAGE.rglob("*.py") for name, node in functions(path) if node.end_lineno - node.lineno >= 60}
    assert long == {}


def test_no_public_function_outside_the_command_line_takes_more_than_12_parameters():
    """More than a dozen wants an options object (the generating functions' SamplingOptions & co., ScoreOptions)."""
    wide = {}
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith("skinaug.cli"):
            continue
        for name, node in functions(path):
            if any(part.startswith("_") for part in name.split(".")):
                continue
            args = node.args
            count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
            count -= bool(args.args) and args.args[0].arg in ("self", "cls")
            if count > 12:
                wide[f"{module_name(path)}.{name}"] = count
    assert wide == {}


def test_no_two_modules_of_one_package_share_a_7_letter_stem():
    """generate.py beside generators.py made the README explain which was which."""
    stems: dict[tuple[str, str], list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem not in ("__init__", "__main__") and len(path.stem) >= 7:
            stems.setdefault((module_name(path).rpartition(".")[0], path.stem[:7]), []).append(path.stem)
    assert {key: names for key, names in stems.items() if len(names) > 1} == {}


def test_the_generating_methods_are_listed_once():
    """skinaug.data.layout lists them (METHODS & co.); elsewhere a list of methods is built from its lists: no literal
    outside it names all the model's methods, or four of them."""
    from skinaug.data.layout import METHODS, MODEL_METHODS

    copies = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) == "skinaug.data.layout":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if set(MODEL_METHODS) <= names or len(names & set(METHODS)) >= 4:
                    copies.append(f"{module_name(path)}:{node.lineno}")
    assert copies == []


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
