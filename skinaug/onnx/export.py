"""`skinaug export onnx`: the model directory's networks as ONNX graphs, checked against PyTorch before they land.

Exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript tracer. The graphs are static (no data-dependent
control flow), the tracer has supported every op here since opset 14, and it needs nothing beyond torch; the dynamo
exporter would need `onnxscript` at export time and its graphs are no better for these networks.

Graphs (float32; names are the graph's input and output names, B a dynamic batch axis):
    encoder.onnx        images (B, 3, S, S) in [-1, 1] -> codes_top, codes_bottom (B, h, w) int64,
                        squared_error (B,) (reconstruction error on [0, 1] pixels, for `encode`'s MSE)
    decoder.onnx        codes_top, codes_bottom -> images (B, 3, S, S) in [-1, 1]
    prior_L.onnx        codes (B, rows, W) [, labels (B,)] [, condition (B, Hc, Wc)] -> logits (B, K, rows, W);
                        rows <= H is dynamic, as in PyTorch (a prefix of rows gives those rows' logits)
    prior_L_condition.onnx   condition (B, Hc, Wc) -> condition_features (B, C, H, W), once per sampling call
    prior_L_step.onnx   one step of the cached sampler (`skinaug.priors.fast`): cells, raster (S,), windows (S, taps)
                        [, labels] [, condition_features], cache_0 .. cache_n -> logits (B, S, K), rows_1 .. rows_n:
                        the new cache entries at the step's positions, which the caller writes back (cache_0, the
                        embedded codes, is written by the caller after drawing). S, the step's slot count, is dynamic.
    prior_L_plan.npy, prior_L_embedding.npy   the step schedule and the code embedding, for the numpy loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SkinaugError
from ..modeldir import PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir
from ..runtime import log
from . import ONNX_DIR, OPSET
from .runtime import file_digest

EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript tracer)"
LOGIT_TOLERANCE = 1e-3  # max |onnxruntime - torch| on logits and images
CODE_AGREEMENT = 0.999  # fraction of positions where the two pick the same code (argmin near-ties aside)


# ----------------------------------------------------------------------------------------------- wrappers


class EncoderGraph(nn.Module):
    def __init__(self, vqvae):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, images: Tensor):
        quantized, codes, _ = self.vqvae.encode(images)
        reconstruction = self.vqvae.decode(quantized)
        squared_error = ((reconstruction.clamp(-1, 1) - images) ** 2).flatten(1).sum(1) / 4.0
        return (*[codes[level] for level in self.levels], squared_error)

    @property
    def levels(self) -> list[str]:
        return ["top", "bottom"] if self.vqvae.config.levels == 2 else ["bottom"]


class DecoderGraph(nn.Module):
    def __init__(self, vqvae):
        super().__init__()
        self.vqvae = vqvae
        self.levels = ["top", "bottom"] if vqvae.config.levels == 2 else ["bottom"]

    def forward(self, *codes: Tensor):
        return self.vqvae.decode_codes(dict(zip(self.levels, codes))).clamp(-1, 1)


class PriorGraph(nn.Module):
    """codes [, labels] [, condition] -> logits."""

    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def forward(self, codes: Tensor, *extra: Tensor):
        config, extra = self.prior.config, list(extra)
        labels = extra.pop(0) if config.num_classes else None
        condition = extra.pop(0) if config.conditioned else None
        return self.prior(codes, labels, condition)


class ConditionGraph(nn.Module):
    def __init__(self, prior):
        super().__init__()
        self.stack = prior.condition_stack

    def forward(self, condition: Tensor):
        return self.stack(condition)


class _Precomputed(nn.Module):
    """Stands in for the condition stack inside the step graph: its input already is the stack's output."""

    def forward(self, features: Tensor) -> Tensor:
        return features


def cache_holders(state: SimpleNamespace) -> list[tuple[object, str]]:
    """(holder, attribute) of every cache in a sampling state, in a fixed order, the embedded-codes grid first:
    the `data` of each cache grid and the key/value `cache` of each attention layer."""
    from ..priors.cache import Grid

    found, seen = [], set()

    def visit(node) -> None:
        if isinstance(node, Grid):
            if id(node) not in seen:
                seen.add(id(node))
                found.append((node, "data"))
        elif isinstance(node, SimpleNamespace):
            for key, value in vars(node).items():
                if key == "cache" and isinstance(value, Tensor):
                    found.append((node, "cache"))
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(state.embedded)
    visit(state.body)
    return found


class StepGraph(nn.Module):
    """One step of `skinaug.priors.fast`, functional: caches in, logits and the caches' new entries out."""

    def __init__(self, prior):
        super().__init__()
        from ..priors.cache import GridLayout

        self.prior = prior
        self.layout = GridLayout(prior.config.height, prior.config.width, prior.config.kernel_size)

    def state(self, batch, labels, condition_features):
        from ..priors.cache import CacheSpec

        spec = CacheSpec(batch, self.layout, torch.float32, torch.device("cpu"))
        stack, self.prior.condition_stack = self.prior.condition_stack, (_Precomputed() if self.prior.config.conditioned else None)
        try:
            return self.prior.start_sampling(spec, labels, condition_features)
        finally:
            self.prior.condition_stack = stack

    def forward(self, cells: Tensor, raster: Tensor, windows: Tensor, *inputs: Tensor):
        from ..priors.cache import Step

        config, inputs = self.prior.config, list(inputs)
        labels = inputs.pop(0) if config.num_classes else None
        condition_features = inputs.pop(0) if config.conditioned else None
        batch = inputs[0].shape[0]
        state = self.state(batch, labels, condition_features)
        holders = cache_holders(state)
        for (holder, attribute), value in zip(holders, inputs):
            setattr(holder, attribute, value.clone())
        step = Step(cells=cells, raster=raster, windows=windows, batch=batch)
        logits = self.prior.step(state, step).reshape(batch, cells.shape[0], -1)
        rows = []
        for holder, attribute in holders[1:]:  # the embedded codes are written by the caller, after drawing
            if attribute == "data":
                rows.append(holder.data.index_select(1, cells))
            else:
                rows.append(holder.cache.index_select(3, raster))
        return (logits, *rows)

    def cache_shapes(self) -> list[dict]:
        """Shape of each cache with the batch axis named, for the runtime to allocate."""
        config = self.prior.config
        labels = torch.zeros(1, dtype=torch.long) if config.num_classes else None
        features = torch.zeros(1, config.channels, config.height, config.width) if config.conditioned else None
        with torch.no_grad():
            holders = cache_holders(self.state(1, labels, features))
        shapes = []
        for holder, attribute in holders:
            shape = list(getattr(holder, attribute).shape)
            axis = 0 if attribute == "data" else 1
            shapes.append({"shape": shape, "batch_axis": axis})
        return shapes


# ----------------------------------------------------------------------------------------------- export


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> dict:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation and constant-folding notices
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    import onnx

    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    # the tracer drops inputs a graph does not read (a step without attention never reads `raster`)
    return {"file": path.name, "inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


def export_onnx(model, *, overwrite: bool = False, opset: int = OPSET, batch: int = 3, seed: int = 0) -> dict:
    """Writes MODEL_DIR/onnx/ (temporary folder, then rename) and config.json["onnx"]; returns the manifest.

    Fails, leaving any earlier export in place, when onnxruntime disagrees with PyTorch (see `check_parity`)."""
    import onnxruntime

    if opset < 17:
        raise SkinaugError(f"--opset must be 17 or newer, not {opset}")
    model_dir = ModelDir(model)
    config = model_dir.config()
    final = model_dir.path / ONNX_DIR
    if final.exists() and not overwrite:
        raise SkinaugError(f"{final} already exists: pass --overwrite to replace it")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx.", suffix=".tmp", dir=model_dir.path))
    try:
        manifest = _export_all(model_dir, config, tmp, opset, batch, generator)
        manifest.update(exporter=EXPORTER, opset=opset, torch_version=torch.__version__,
                        onnxruntime_version=onnxruntime.__version__, export_seconds=round(time.perf_counter() - started, 2))
        old = None
        if final.exists():
            old = final.with_name(f".onnx.old.{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model_dir.update_config(onnx=manifest)
    return manifest


def _export_all(model_dir: ModelDir, config: dict, out: Path, opset: int, batch: int, generator) -> dict:
    from .runtime import OnnxModel

    size = config["image_size"]
    vqvae = model_dir.load_vqvae("cpu")
    levels = list(EncoderGraph(vqvae).levels)
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    files: dict = {}
    files["encoder"] = _export(EncoderGraph(vqvae), (images,), out / "encoder.onnx", ["images"],
                               [f"codes_{level}" for level in levels] + ["squared_error"],
                               {name: {0: "batch"} for name in ["images", *[f"codes_{lv}" for lv in levels], "squared_error"]},
                               opset)
    codes = tuple(torch.randint(config["codebook_size"], (batch, *config["grid"][level]), generator=generator)
                  for level in levels)
    files["decoder"] = _export(DecoderGraph(vqvae), codes, out / "decoder.onnx", [f"codes_{lv}" for lv in levels],
                               ["images"], {name: {0: "batch"} for name in [*[f"codes_{lv}" for lv in levels], "images"]},
                               opset)
    digests = {"vqvae": file_digest(model_dir.path / VQVAE_WEIGHTS)}
    priors = {}
    for level in levels:
        if model_dir.has_prior(level):
            from ..train_prior import load_prior

            prior, _ = load_prior(model_dir, level, "cpu")
            priors[level] = prior
            files[f"prior_{level}"] = _export_prior(prior, level, out, opset, batch, generator)
            digests[f"prior_{level}"] = file_digest(model_dir.path / PRIOR_WEIGHTS[level])
    manifest = {"files": files, "weights": digests, "fingerprint": config["fingerprint"]}
    runtime = OnnxModel(model_dir, "cpu", manifest=manifest, onnx_dir=out)
    manifest["parity"] = check_parity(runtime, vqvae, priors, config, batch, generator)
    return manifest


def _export_prior(prior, level: str, out: Path, opset: int, batch: int, generator) -> dict:
    from ..priors.cache import GridLayout

    config = prior.config
    codes = torch.randint(config.codebook_size, (batch, config.height, config.width), generator=generator)
    extra, extra_names = [], []
    if config.num_classes:
        extra.append(torch.randint(config.num_classes, (batch,), generator=generator))
        extra_names.append("labels")
    condition = None
    if config.conditioned:
        condition = torch.randint(config.condition_codebook_size, (batch, config.condition_height, config.condition_width),
                                  generator=generator)
        extra.append(condition)
        extra_names.append("condition")
    dynamic = {name: {0: "batch"} for name in ["codes", *extra_names, "logits"]}
    dynamic["codes"][1] = dynamic["logits"][2] = "rows"
    entry = {"full": _export(PriorGraph(prior), (codes, *extra), out / f"prior_{level}.onnx", ["codes", *extra_names],
                             ["logits"], dynamic, opset),
             "arch": config.arch, "height": config.height, "width": config.width,
             "codebook_size": config.codebook_size, "num_classes": config.num_classes,
             "conditioned": config.conditioned, "channels": config.channels}
    step_extra, step_names = [], []
    if config.num_classes:
        step_extra.append(extra[0])
        step_names.append("labels")
    if config.conditioned:
        entry["condition"] = _export(ConditionGraph(prior), (condition,), out / f"prior_{level}_condition.onnx",
                                     ["condition"], ["condition_features"],
                                     {"condition": {0: "batch"}, "condition_features": {0: "batch"}}, opset)
        with torch.no_grad():
            step_extra.append(prior.condition_stack(condition))
        step_names.append("condition_features")
    graph = StepGraph(prior)
    shapes = graph.cache_shapes()
    caches = []
    for spec in shapes:
        shape = list(spec["shape"])
        shape[spec["batch_axis"]] = batch
        caches.append(torch.randn(*shape, generator=generator))
    layout = GridLayout(config.height, config.width, config.kernel_size)
    plan = layout.plan(prior.wavefront_skew)
    widest = plan[int((plan[:, :, 1] < layout.positions).sum(1).argmax())]
    cache_names = [f"cache_{i}" for i in range(len(caches))]
    row_names = [f"rows_{i}" for i in range(1, len(caches))]
    dynamic = {"cells": {0: "slots"}, "raster": {0: "slots"}, "windows": {0: "slots"},
               "logits": {0: "batch", 1: "slots"}}
    dynamic.update({name: {0: "batch"} for name in step_names})
    dynamic.update({name: {spec["batch_axis"]: "batch"} for name, spec in zip(cache_names, shapes)})
    dynamic.update({name: {spec["batch_axis"]: "batch", spec["batch_axis"] + 1: "slots"}
                    for name, spec in zip(row_names, shapes[1:])})
    entry["step"] = _export(graph, (widest[:, 0], widest[:, 1], widest[:, 2:], *step_extra, *caches),
                            out / f"prior_{level}_step.onnx", ["cells", "raster", "windows", *step_names, *cache_names],
                            ["logits", *row_names], dynamic, opset)
    entry["step"]["caches"] = shapes
    np.save(out / f"prior_{level}_plan.npy", plan.numpy().astype(np.int64), allow_pickle=False)
    np.save(out / f"prior_{level}_embedding.npy", prior.embed.weight.detach().float().numpy(), allow_pickle=False)
    entry["plan"], entry["embedding"] = f"prior_{level}_plan.npy", f"prior_{level}_embedding.npy"
    return entry


# ----------------------------------------------------------------------------------------------- parity


def check_parity(runtime, vqvae, priors: dict, config: dict, batch: int, generator) -> dict:
    """onnxruntime against PyTorch on random inputs; raises SkinaugError naming the graph that disagrees.

    Images and logits: max absolute difference within LOGIT_TOLERANCE. Code maps: the same code on at least
    CODE_AGREEMENT of positions (argmin near-ties may fall either way). Sampling: the cached onnx sampler against
    `skinaug.priors.sample` with the same uniforms: logits within tolerance, codes equal on CODE_AGREEMENT."""
    from ..priors import sample

    figures: dict = {}
    size = config["image_size"]
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad():
        _, torch_codes, _ = vqvae.encode(images)
    onnx_codes = runtime.vqvae.encode_float(images.numpy())
    agreement = min(float((onnx_codes[lv] == torch_codes[lv].numpy()).mean()) for lv in torch_codes)
    figures["encoder_code_agreement"] = agreement
    _require(agreement >= CODE_AGREEMENT, f"encoder: codes agree on {agreement:.4%} of positions")
    codes = {lv: torch.randint(config["codebook_size"], (batch, *config["grid"][lv]), generator=generator) for lv in torch_codes}
    with torch.no_grad():
        torch_images = vqvae.decode_codes(codes).clamp(-1, 1).numpy()
    difference = float(np.abs(runtime.vqvae.decode_float({lv: c.numpy() for lv, c in codes.items()}) - torch_images).max())
    figures["decoder_max_abs_diff"] = difference
    _require(difference <= LOGIT_TOLERANCE, f"decoder: images differ by {difference:.2e}")
    for level, prior in priors.items():
        cfg = prior.config
        labels = torch.randint(cfg.num_classes, (batch,), generator=generator) if cfg.num_classes else None
        condition = (torch.randint(cfg.condition_codebook_size, (batch, cfg.condition_height, cfg.condition_width),
                                   generator=generator) if cfg.conditioned else None)
        codes = torch.randint(cfg.codebook_size, (batch, cfg.height, cfg.width), generator=generator)
        as_numpy = lambda t: None if t is None else t.numpy()  # noqa: E731
        with torch.no_grad():
            torch_logits = prior(codes, labels, condition).numpy()
        onnx_prior = runtime.prior(level)
        difference = float(np.abs(onnx_prior.logits(codes.numpy(), as_numpy(labels), as_numpy(condition)) - torch_logits).max())
        figures[f"prior_{level}_max_abs_diff"] = difference
        _require(difference <= LOGIT_TOLERANCE, f"{level} prior: logits differ by {difference:.2e}")
        uniforms = torch.rand(batch, cfg.height * cfg.width, generator=generator)
        torch_sample, torch_logits = sample(prior, labels, condition, n=batch, uniforms=uniforms, return_logits=True)
        onnx_sample, onnx_logits = onnx_prior.sample(as_numpy(labels), as_numpy(condition), n=batch,
                                                     uniforms=uniforms.numpy(), return_logits=True)
        difference = float(np.abs(onnx_logits - torch_logits.numpy()).max())
        agreement = float((onnx_sample == torch_sample.numpy()).mean())
        figures[f"prior_{level}_step_max_abs_diff"] = difference
        figures[f"prior_{level}_sample_agreement"] = agreement
        _require(difference <= LOGIT_TOLERANCE, f"{level} prior, cached step: logits differ by {difference:.2e}")
        _require(agreement >= CODE_AGREEMENT, f"{level} prior, cached step: samples agree on {agreement:.4%} of positions")
    figures.update(tolerance=LOGIT_TOLERANCE, code_agreement_required=CODE_AGREEMENT, batch=batch)
    for key, value in figures.items():
        if isinstance(value, float):
            log(f"parity {key}: {value:.3g}")
    return figures


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise SkinaugError(f"ONNX export failed its parity check against PyTorch: {problem} "
                           f"(tolerance {LOGIT_TOLERANCE:g} on images and logits, {CODE_AGREEMENT:.1%} of codes)")
