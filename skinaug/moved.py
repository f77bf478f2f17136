"""The modules that moved when the package was regrouped by layer, and the import hook that keeps their old names
working for a while: `import skinaug.generate` gives the module `skinaug.generation.commands` itself (so that
patching it patches the real thing) and a DeprecationWarning naming the new place.

There are no files at the old paths: the table below is the one record of the moves (CHANGELOG.md has the
migration note). `skinaug.data`, `skinaug.vqvae` and `skinaug.training` became packages; they re-export what the
old modules held (from `data.scan`, `vqvae.model` and `training.loop`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "skinaug.io": "skinaug.storage.fs",
    "skinaug.codes": "skinaug.storage.codefile",
    "skinaug.trained_on": "skinaug.storage.trained_on",
    "skinaug.output": "skinaug.storage.writer",
    "skinaug.modeldir": "skinaug.storage.modeldir",
    "skinaug.image_cache": "skinaug.storage.image_cache",
    "skinaug.layout": "skinaug.data.layout",
    "skinaug.class_map": "skinaug.data.class_map",
    "skinaug.classic": "skinaug.data.classic",
    "skinaug.quantize": "skinaug.vqvae.quantize",
    "skinaug.losses": "skinaug.training.losses",
    "skinaug.train_vqvae": "skinaug.training.vqvae",
    "skinaug.train_prior": "skinaug.training.prior",
    "skinaug.baselines.train": "skinaug.training.baseline",
    "skinaug.sampler": "skinaug.generation.sampler",
    "skinaug.generate": "skinaug.generation.commands",
    "skinaug.generators": "skinaug.generation.commands",
    "skinaug.iterative": "skinaug.generation.iterative",
    "skinaug.encode": "skinaug.generation.encode_decode",
    "skinaug.baselines.synthesize": "skinaug.generation.baseline_sampler",
    "skinaug.inspection": "skinaug.reports.inspection",
    "skinaug.preview": "skinaug.reports.preview",
    "skinaug.onnx.runtime": "skinaug.backends.onnx_runtime",
    "skinaug.onnx.export": "skinaug.export.onnx",
    "skinaug.cli.codes": "skinaug.cli.encode_decode",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.new}: import it from there (the old name will be removed)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)  # the module itself, not a copy

    def exec_module(self, module):
        pass  # already executed under its new name


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds an old module name of MOVED as its new module."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))


def former_module(package: str, module: str, submodules: tuple[str, ...]):
    """The `__getattr__` of a package that replaced a module of the same name: the former module's names, from
    `package.module`, imported on first use (so that importing one submodule does not import the others)."""

    def __getattr__(name):
        if name.startswith("__") or name in submodules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())  # before the path finders: an old name never finds a stale file
