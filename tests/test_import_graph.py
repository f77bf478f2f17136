"""Who imports a trainer: reading a model (loading its priors, exporting it, scoring with it) never needs the code
that trains one. Read from the source with ast, lazy imports inside functions included."""

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skinaug"
TRAINERS = {"skinaug.training.vqvae", "skinaug.training.prior", "skinaug.training.baseline"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the skinaug modules it imports anywhere in its source."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets.add(target)
                targets.update(f"{target}.{alias.name}" for alias in node.names)  # from . import train_prior
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[module] = targets
    graph = {module: {target for target in targets if target in graph and target != module}
             for module, targets in graph.items()}
    graph["skinaug"] = set()  # skinaug/__init__.py imports api only when skinaug.load_model & co. are used
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "skinaug.vqvae.model" in graph["skinaug.backends.torch"]  # imported inside encode_batch
    assert TRAINERS <= reachable(graph, "skinaug.cli.train")


@pytest.mark.parametrize("module", ["skinaug.training.loop", "skinaug.storage.modeldir", "skinaug.generation.encode_decode", "skinaug.export.onnx",
                                   "skinaug.backends.onnx_runtime", "skinaug.scores.classifier", "skinaug.scores.cas",
                                   "skinaug.scores.fid", "skinaug.scores.memorization", "skinaug.scores.code_usage",
                                   "skinaug.baselines.store"])
def test_reading_a_model_never_imports_a_trainer(module):
    assert not reachable(import_graph(), module) & TRAINERS


def test_the_baselines_trainer_imports_the_toolkit_not_another_trainer():
    assert "skinaug.training.loop" in import_graph()["skinaug.training.baseline"]
    assert not reachable(import_graph(), "skinaug.training.baseline") & (TRAINERS - {"skinaug.training.baseline"})


def test_scores_and_generation_never_import_a_trainer():
    """Every scoring module and every generating one; the studies (score benefit, sweep) train, so they live in
    skinaug.studies, above both."""
    graph = import_graph()
    readers = [module for module in graph if module.startswith(("skinaug.scores", "skinaug.backends"))]
    readers += ["skinaug.generation.commands", "skinaug.api", "skinaug.generation.baseline_sampler", "skinaug.priors.refine"]
    assert len(readers) > 12
    for module in readers:
        assert not reachable(graph, module) & TRAINERS, module
    assert reachable(graph, "skinaug.studies.benefit") & TRAINERS  # the check above would see a study in scores/
