"""`skinaug export onnx`."""

from __future__ import annotations

from typing import Annotated

import typer

from ..runtime import set_quiet
from .options import JsonOpt, ModelOpt, OverwriteOpt, QuietOpt, emit

app = typer.Typer(help="Export a model directory for other runtimes.", no_args_is_help=True)


@app.command("onnx")
def onnx(
    model: ModelOpt,
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset (17 or newer).")] = 17,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Write MODEL_DIR/onnx/ (VQ-VAE encoder and decoder, every trained prior with its cached sampling step),
    checked against PyTorch: afterwards every command runs with --backend onnx, without PyTorch.

    Example: skinaug export onnx --model models/derm64
    """
    set_quiet(quiet)
    from ..onnx.export import export_onnx
    from ..runtime import log

    manifest = export_onnx(model, overwrite=overwrite, opset=opset)
    log(f"wrote {model / 'onnx'} ({len(manifest['files'])} networks, opset {manifest['opset']}) in {manifest['export_seconds']}s")
    emit(manifest, json_, model / "onnx")
