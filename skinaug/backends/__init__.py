"""The backends that run a model: PyTorch, or the exported ONNX graphs through onnxruntime.

- `base.py` (torch-free): the interfaces, a code model and a prior sampler, and what both backends share.
- `torch.py`: the networks in PyTorch (any device, torchrun sharding, --bf16, --compile, --refine).
- `onnx.py` (torch-free): the graphs `skinaug export onnx` wrote, run by `skinaug.onnx.runtime`.
"""

from __future__ import annotations


def open_backend(model_dir, device="auto", name: str = "torch", **options):
    """`model_dir` (a ModelDir) on backend `name` ("torch" or "onnx", as `runtime.resolve_backend` gives it).

    options: dtype and compile_step (torch only). Each backend is imported here, when asked for: the onnx one never
    imports torch."""
    if name == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(model_dir, device, **options)
    from .torch import TorchBackend

    return TorchBackend(model_dir, device, **options)
