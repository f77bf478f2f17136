"""`skinaug export onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOpt, ModelOpt, OverwriteOpt, QuietOpt, emit

app = typer.Typer(help="Export a model directory for other runtimes.", no_args_is_help=True)


@app.command("onnx")
def onnx(
    model: ModelOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write a model directory of its own here (config.json, weights, onnx/) and leave --model "
                      "untouched: for a read-only model, e.g. a shipped one. Default: MODEL_DIR/onnx/.")] = None,
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset (17 or newer).")] = 17,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Write MODEL_DIR/onnx/ (VQ-VAE encoder and decoder, every trained prior with its cached sampling step),
    checked against PyTorch: afterwards every command runs with --backend onnx, without PyTorch. With --out DIR,
    DIR becomes a model directory of its own and MODEL_DIR is only read.

    Example: skinaug export onnx --model models/derm64
    Example: skinaug export onnx --model ham10000-64 --out ~/ham64-onnx   (then --model ~/ham64-onnx --backend onnx)
    """
    from ..export.onnx import export_onnx
    from ..runtime import log

    manifest = export_onnx(model, out=out, overwrite=overwrite, opset=opset)
    written = (out if out is not None else model) / "onnx"
    log(f"wrote {written} ({len(manifest['files'])} networks, opset {manifest['opset']}) in {manifest['export_seconds']}s")
    emit(manifest, json_, written)
