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
    prior_L_condition.onnx   condition (B, Hc, Wc) -> condition_features (H * W, B, C), once per sampling call
    prior_L_step.onnx   one step of the cached sampler (`skinaug.priors.fast`, the same schedule), every cache bound
                        in place by the runtime (see `StepGraph`): raster (S,), windows (S, taps) [, labels]
                        [, condition_features], grid_0 .. grid_n (cells, B, C), keys_a, values_a (prefix, B, C),
                        above_0 .. above_m (W, B, out) -> logits (B * S, K), rows_1 .. rows_n (S, B, C), key_a,
                        value_a (B, C)
    prior_L_row.onnx    raster order only: the convs' above-tap sums of a whole row (see `RowGraph`)
    prior_L_embed.onnx  codes (S, B) [, partial_key_a, partial_value_a (B, C)] -> embedded (S, B, C) [, key_a,
                        value_a (B, C)]: the drawn codes' embeddings, for grid_0; with attention whose keys see their
                        own code, the step's key_a, value_a completed with it (see `EmbedGraph`)

`skinaug export onnx --model M` writes M/onnx/ and M/config.json["onnx"]; `--out DIR` leaves M alone and makes DIR a
model directory of its own (config.json, model card and weights copied, plus DIR/onnx/), for a model that is
read-only, such as one shipped with skinaug.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SkinaugError
from ..storage.fs import EXPORTED_MODEL, OutputLock, claim_output, file_mode, folder_mode, real_path, swap_into_place
from ..storage.modeldir import PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir
from ..runtime import log
from ..spec import ModelSpec
from ..storage.trained_on import TRAINED_ON
from ..backends.onnx_runtime import EXPORT_FORMAT, ONNX_DIR, OPSET, file_digest

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
    """condition (B, Hc, Wc) -> condition_features (H * W, B, C): position-major, so that a step reads its position's
    features as one contiguous block."""

    def __init__(self, prior):
        super().__init__()
        self.stack = prior.condition_stack

    def forward(self, condition: Tensor):
        return self.stack(condition).flatten(2).permute(2, 0, 1)


class EmbedGraph(nn.Module):
    """codes (S, B) -> embedded (S, B, C): the drawn codes' embeddings, which the runtime writes into grid_0 in
    place. With attention whose keys see their position's own code (raster order, S = 1), also per such layer a:
    partial_key_a, partial_value_a (B, C), the step's key and value outputs -> key_a, value_a (B, C), completed with
    the drawn code as `CausalSelfAttention.write_code` does, which the runtime binds into the key/value caches."""

    def __init__(self, prior, code_readers: tuple = ()):
        super().__init__()
        self.embed = prior.embed
        self.own_code = nn.ModuleList(layer.own_code for layer in code_readers)

    def forward(self, codes: Tensor, *partial: Tensor):
        embedded = self.embed(codes)
        if not len(self.own_code):
            return embedded
        completed = []
        for a, own_code in enumerate(self.own_code):
            key, value = own_code(embedded[0]).chunk(2, dim=-1)
            completed += [partial[2 * a] + key, partial[2 * a + 1] + value]
        return (embedded, *completed)


class _StepGrid:
    """A cache grid as the exported graphs see it: a read-only input (cells, B, C), cell-major, so that the entries of
    the positions of one step, for the whole batch, are one contiguous block (the runtime numbers cells in the order
    positions are sampled, after a zero cell 0 that every padding tap reads; see `skinaug.onnx.runtime`). `write`
    keeps the value: it becomes a graph output, (slots, B, C), which the runtime binds straight into the grid at the
    step's cells. Windows gather the other taps at the cells the runtime gives, and take the centre, which is always
    the position itself, from the written value."""

    def __init__(self, data: Tensor | None, channels: int, layout):
        self.data, self.channels, self.layout, self.written = data, channels, layout, None
        self.centre = len(layout.window_offsets()) - 1

    def write(self, step, values: Tensor) -> None:
        self.written = values  # (batch * slots, C), image-major like every step activation

    def output(self, step) -> Tensor:
        """The written entries, slot-major: (slots, B, C)."""
        return self.written.reshape(step.batch, step.slots, -1).transpose(0, 1)

    def _gather(self, cells: Tensor) -> Tensor:
        """(n, t) cells -> (B, n, t, C)."""
        n, t = cells.shape
        rows = self.data.index_select(0, cells.flatten())  # (n * t, B, C)
        return rows.reshape(n, t, rows.shape[1], rows.shape[2]).permute(2, 0, 1, 3)

    def windows(self, step, taps: slice) -> Tensor:
        parts, stop = [], min(taps.stop, self.centre)
        if stop > taps.start:
            parts.append(self._gather(step.windows[:, taps.start : stop]))
        if taps.stop > self.centre:
            if self.written is None:
                raise RuntimeError("a window reads its centre before the step wrote it")
            parts.append(self.written.reshape(step.batch, step.slots, 1, -1))
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)).reshape(step.batch * step.slots, -1)

    def row_windows(self, cells: Tensor, taps: slice) -> Tensor:
        """(W * B, taps * C), position-major: the windows of a whole image row, given their cells (W, above taps),
        for `ConvStep.row`."""
        windows = self._gather(cells[:, taps]).transpose(0, 1)  # (W, B, t, C)
        return windows.reshape(windows.shape[0] * windows.shape[1], -1)


class _StepKeyValues:
    """An attention layer's keys and values as the exported step sees them: two read-only inputs (L, B, C),
    position-major, holding a dummy slot 0 (zero, masked) and then positions 0 .. p - 1: the valid prefix of the
    cache, never empty. The position's own key and value become graph outputs, bound into slot p + 1 (with `earlier`,
    keys that see their own code: first completed by the embed graph, see `EmbedGraph`). One slot per step (attention
    samples in raster order)."""

    def __init__(self, keys: Tensor | None, values: Tensor | None, heads: int, head_dim: int):
        self.keys, self.values, self.heads, self.head_dim, self.written = keys, values, heads, head_dim, None

    def attend(self, step, query: Tensor, key_value: Tensor, earlier: bool = False) -> Tensor:
        batch, channels = step.batch, query.shape[1]
        key, value = key_value[:, :channels], key_value[:, channels:]
        self.written = (key, value)
        heads = (batch, self.heads, self.head_dim)
        query = query.reshape(heads)
        prefix = (self.keys.reshape(-1, *heads) * query).sum(-1)  # (L, B, heads)
        index = torch.arange(prefix.shape[0])[:, None, None]
        if earlier:
            # the prefix alone; its dummy slot is masked unless it is all there is: position 0 then attends to zero
            dummy = (index == 0) & (index[-1] > 0)
            weights = torch.where(dummy, torch.full_like(prefix, float("-inf")), prefix).softmax(dim=0)
            return (weights[..., None] * self.values.reshape(-1, *heads)).sum(0).reshape(batch, channels)
        first = index == 0
        prefix = torch.where(first, torch.full_like(prefix, float("-inf")), prefix)
        own = (key.reshape(heads) * query).sum(-1)[None]
        weights = torch.cat([prefix, own]).softmax(dim=0)  # (L + 1, B, heads)
        attended = (weights[:-1, ..., None] * self.values.reshape(-1, *heads)).sum(0)
        return (attended + weights[-1, ..., None] * value.reshape(heads)).reshape(batch, channels)


class _StepSpec:
    """`CacheSpec` for tracing the graphs: grids and key/value caches are handed out in creation order, backed by the
    graphs' inputs (or, with no inputs, only recorded, to learn their number and widths). In raster order (priors
    with attention) the convs sum their above taps per row (`ConvStep`, the row graph)."""

    def __init__(self, batch, layout, rows_above: bool, grids: list | None = None, key_values: list | None = None):
        self.batch, self.layout = batch, layout
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.rows_above, self.conv_steps, self.code_readers = rows_above, [], []
        self.grid_inputs, self.key_value_inputs = grids, key_values
        self.grids: list[_StepGrid] = []
        self.key_values: list[_StepKeyValues] = []

    def cast(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype)

    def matmul(self, weight: Tensor, bias: Tensor | None = None):
        from ..priors.cache import StepMatmul

        return StepMatmul(self.cast(weight), None if bias is None else self.cast(bias))  # a plain addmm: traceable

    def linear(self, weight: Tensor, bias: Tensor | None = None):
        return self.matmul(weight.reshape(weight.shape[0], -1).t(), bias)

    def zeros(self, *shape) -> Tensor:
        return torch.zeros(*shape)

    def conv(self, grid, taps: slice, weight: Tensor, bias: Tensor | None):
        from ..priors.cache import ConvStep

        return ConvStep(self, grid, taps, self.cast(weight), None if bias is None else self.cast(bias))

    def grid(self, channels: int) -> _StepGrid:
        data = None if self.grid_inputs is None else self.grid_inputs[len(self.grids)]
        self.grids.append(_StepGrid(data, channels, self.layout))
        return self.grids[-1]

    def key_value_cache(self, heads: int, head_dim: int) -> _StepKeyValues:
        keys, values = (None, None) if self.key_value_inputs is None else self.key_value_inputs[len(self.key_values)]
        self.key_values.append(_StepKeyValues(keys, values, heads, head_dim))
        return self.key_values[-1]


class RowGraph(nn.Module):
    """The convs' above-tap sums for a whole image row (`ConvStep.row`), run once per row before its steps (raster
    order only).

    Inputs: row_windows (W, r * k) int64, the cells of the row's above taps; grid_0 .. grid_n (cells, B, C).
    Outputs: above_0 .. above_m (W, B, out), which the runtime binds in place and the steps read."""

    def __init__(self, step_graph: "StepGraph"):
        super().__init__()
        self.step_graph = step_graph

    def forward(self, row_windows: Tensor, *grids: Tensor):
        graph = self.step_graph
        spec = _StepSpec(grids[0].shape[1], graph.layout, True, list(grids))
        labels = torch.zeros(grids[0].shape[1], dtype=torch.long) if graph.prior.config.num_classes else None
        graph.start(spec, labels)  # (labels: the gate biases, unused here)
        for conv in spec.conv_steps:
            conv.row(row_windows)
        return tuple(conv.rows for conv in spec.conv_steps)


class StepGraph(nn.Module):
    """One step of the cached sampler (`skinaug.priors.fast`), with every cache bound in place by the runtime.

    The schedule is the torch sampler's: raster order with one position per step for priors with attention (then
    the convs' above taps come per row from `RowGraph`), the wavefront otherwise (several positions per step).

    Inputs: raster (S,) int64, the step's positions; windows (S, taps) int64, the cells of their windows (the
    centre column is not read); [labels (B,)]; [condition_features (H * W, B, C)]; grid_0 .. grid_n (cells, B, C)
    (grid_0: the embedded codes); keys_a, values_a (L, B, C) per attention layer (the valid prefix, see
    `_StepKeyValues`); above_0 .. above_m (W, B, out), the current row's above-tap sums. Outputs: logits (B * S, K),
    image-major; rows_1 .. rows_n (S, B, C), the grids' entries at the step's cells; key_a, value_a (B, C). The
    layers run their own `step` code: only the caches behind them differ (`_StepSpec`)."""

    def __init__(self, prior):
        super().__init__()
        from ..priors.cache import GridLayout

        self.prior = prior
        config = prior.config
        self.layout = GridLayout(config.height, config.width, config.kernel_size)
        self.rows_above = prior.wavefront_skew is None
        self.grid_channels, self.attention_channels, self.row_channels, self.code_readers = self.caches()

    def start(self, spec, labels):
        """The sampling state on `spec`'s caches, with the condition stack left out (its output is an input here)."""
        stack, self.prior.condition_stack = self.prior.condition_stack, None
        try:
            return self.prior.start_sampling(spec, labels, None)
        finally:
            self.prior.condition_stack = stack

    def caches(self) -> tuple[list[int], list[int], list[int], list]:
        """Channels of each grid (creation order, the embedded codes first), of each attention layer, and of each
        conv's row sums (`ConvStep.rows`, in creation order; none in wavefront order); and the attention layers whose
        keys see their position's own code, in creation order (`CacheSpec.code_readers`)."""
        config = self.prior.config
        spec = _StepSpec(1, self.layout, self.rows_above)
        with torch.no_grad():
            self.start(spec, torch.zeros(1, dtype=torch.long) if config.num_classes else None)
        return ([g.channels for g in spec.grids], [kv.heads * kv.head_dim for kv in spec.key_values],
                [conv.rows.shape[-1] for conv in spec.conv_steps], [layer for layer, _ in spec.code_readers])

    def forward(self, raster: Tensor, windows: Tensor, *inputs: Tensor):
        from ..priors.cache import Step

        config, inputs = self.prior.config, list(inputs)
        labels = inputs.pop(0) if config.num_classes else None
        features = inputs.pop(0) if config.conditioned else None
        grids, inputs = inputs[: len(self.grid_channels)], inputs[len(self.grid_channels) :]
        key_values, rows = inputs[: 2 * len(self.attention_channels)], inputs[2 * len(self.attention_channels) :]
        batch = grids[0].shape[1]
        spec = _StepSpec(batch, self.layout, self.rows_above, grids, list(zip(key_values[::2], key_values[1::2])))
        state = self.start(spec, labels)
        for conv, sums in zip(spec.conv_steps, rows, strict=True):
            conv.rows = sums
        step = Step(cells=raster, raster=raster, windows=windows, batch=batch)
        if features is not None:  # (S, B, C) -> (B * S, C)
            step.condition = features.index_select(0, raster).transpose(0, 1).reshape(-1, features.shape[2])
        logits = state.head(torch.nn.functional.elu(self.prior.body_step(state.body, step)))
        if any(grid.written is None for grid in spec.grids[1:]):
            raise RuntimeError("a cache grid was not written by the step")
        rows = [grid.output(step) for grid in spec.grids[1:]]
        return (logits, *rows, *[t for kv in spec.key_values for t in kv.written])


# ----------------------------------------------------------------------------------------------- export


@contextmanager
def _elu_as_exp(opset: int):
    """ELU (alpha 1, as every ELU here) exported as Relu(x) + Exp(Min(x, 0)) - 1 instead of the Elu op, which
    onnxruntime's CPU provider evaluates element by element: 2.4x faster on (64, 256) activations, and the sampling
    step runs several ELUs per position. Equal to ELU within float rounding (exp(x) - 1 against expm1(x))."""
    def elu(g, x, alpha, scale, input_scale):
        zero, one = (g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32)) for v in (0.0, 1.0))
        negative = g.op("Sub", g.op("Exp", g.op("Min", x, zero)), one)
        return g.op("Add", g.op("Relu", x), negative)

    torch.onnx.register_custom_op_symbolic("aten::elu", elu, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::elu", opset)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> dict:
    import warnings

    with torch.no_grad(), warnings.catch_warnings(), _elu_as_exp(opset):
        warnings.simplefilter("ignore")  # the tracer's deprecation and constant-folding notices
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    import onnx

    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    # the tracer drops inputs a graph does not read (a step without attention never reads `raster`)
    return {"file": path.name, "inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


def export_onnx(model, *, out=None, overwrite: bool = False, opset: int = OPSET, batch: int = 3, seed: int = 0) -> dict:
    """Exports MODEL_DIR's networks to ONNX; returns the manifest (also written to config.json["onnx"]).

    out None (or MODEL_DIR itself): MODEL_DIR/onnx/ and MODEL_DIR/config.json, which must be writable (a shipped
    model is not). out DIR: DIR becomes a model directory of its own, for --model DIR --backend onnx: config.json,
    the model card and the weights (what `ModelDir` and the staleness check read) copied from MODEL_DIR, plus
    onnx/; MODEL_DIR is only read. Either way the files are written into a temporary folder and renamed into place,
    and nothing changes when onnxruntime disagrees with PyTorch (see `check_parity`)."""
    if opset < 17:
        raise SkinaugError(f"{{opset}} must be 17 or newer, not {opset}")
    for package in ("onnx", "onnxruntime"):  # the export writes with one and checks parity with the other
        if importlib.util.find_spec(package) is None:
            raise SkinaugError(f"export onnx needs {package}: pip install 'skinaug[onnx]' (or 'skinaug[onnx-gpu]')")
    model_dir = ModelDir(model)
    config = model_dir.config()
    if out is not None and not _same_path(out, model_dir.path):
        return _export_standalone(model_dir, config, Path(out), overwrite, opset, batch, seed)
    final = model_dir.path / ONNX_DIR
    if final.exists() and not overwrite:
        raise SkinaugError(f"{final} already exists: pass {{overwrite=True}} to replace it")
    _require_writable(model_dir.path)
    # the model directory's own lock: no `train vqvae|prior` or other export writes it meanwhile
    lock = OutputLock(real_path(model_dir.path), model_dir.path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".onnx.", suffix=".tmp", dir=model_dir.path))
        try:
            os.chmod(tmp, folder_mode())  # mkdtemp makes it 0700: the export follows the umask like every output
            manifest = _export_timed(model_dir, config, tmp, opset, batch, seed)
            swap_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        model_dir.update_config(onnx=manifest)
    finally:
        lock.release()
    return manifest


def _export_timed(model_dir: ModelDir, config: dict, out: Path, opset: int, batch: int, seed: int) -> dict:
    import onnxruntime

    started = time.perf_counter()
    manifest = _export_all(model_dir, config, out, opset, batch, torch.Generator().manual_seed(seed))
    manifest.update(format=EXPORT_FORMAT, exporter=EXPORTER, opset=opset, torch_version=torch.__version__,
                    onnxruntime_version=onnxruntime.__version__, export_seconds=round(time.perf_counter() - started, 2))
    return manifest


def _export_standalone(model_dir: ModelDir, config: dict, out: Path, overwrite: bool, opset: int, batch: int,
                       seed: int) -> dict:
    """DIR as a model directory of its own (see `export_onnx`), under the output policy: --overwrite replaces only
    an earlier export, never the model or a folder holding it; built beside DIR and swapped in when complete."""
    from ..storage.modeldir import CONFIG

    claim = claim_output(out, kind=EXPORTED_MODEL, inputs=(model_dir.path,), overwrite=overwrite)
    work = claim.work
    try:
        work.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, "MODEL_CARD.md", TRAINED_ON, VQVAE_WEIGHTS, *PRIOR_WEIGHTS.values()):
            if (model_dir.path / name).is_file():
                shutil.copyfile(model_dir.path / name, work / name)
                os.chmod(work / name, file_mode())
        (work / ONNX_DIR).mkdir()
        manifest = _export_timed(model_dir, config, work / ONNX_DIR, opset, batch, seed)
        ModelDir(work).update_config(onnx=manifest)
    except BaseException:
        if claim.staged:
            shutil.rmtree(work, ignore_errors=True)  # an export is not resumable: nothing to keep
        claim.release()
        raise
    claim.commit()
    return manifest


def _require_writable(path: Path) -> None:
    """One clear line when the export cannot go into the model directory itself."""
    from ..storage.modeldir import require_writable

    hint = f"export it elsewhere with `skinaug export onnx --model {path} --out DIR`"
    require_writable(path, hint)
    probe = None
    try:
        probe = tempfile.mkdtemp(prefix=".write-check.", dir=path)
    except OSError as error:
        raise SkinaugError(f"{path} is not writable ({error.strerror or error}): {hint}") from None
    finally:
        if probe is not None:
            os.rmdir(probe)


def _same_path(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()




def _export_all(model_dir: ModelDir, config: dict, out: Path, opset: int, batch: int, generator) -> dict:
    from ..backends.onnx_runtime import OnnxModel

    spec = ModelSpec.from_config(config)
    size = spec.image_size
    vqvae = model_dir.load_vqvae("cpu")
    levels = list(EncoderGraph(vqvae).levels)
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    files: dict = {}
    files["encoder"] = _export(EncoderGraph(vqvae), (images,), out / "encoder.onnx", ["images"],
                               [f"codes_{level}" for level in levels] + ["squared_error"],
                               {name: {0: "batch"} for name in ["images", *[f"codes_{lv}" for lv in levels], "squared_error"]},
                               opset)
    codes = tuple(torch.randint(spec.codebook_size, (batch, *spec.grid[level]), generator=generator) for level in levels)
    files["decoder"] = _export(DecoderGraph(vqvae), codes, out / "decoder.onnx", [f"codes_{lv}" for lv in levels],
                               ["images"], {name: {0: "batch"} for name in [*[f"codes_{lv}" for lv in levels], "images"]},
                               opset)
    digests = {"vqvae": file_digest(model_dir.path / VQVAE_WEIGHTS)}
    priors = {}
    for level in levels:
        if model_dir.has_prior(level):
            prior, _ = model_dir.load_prior(level, "cpu")
            priors[level] = prior
            files[f"prior_{level}"] = _export_prior(prior, level, out, opset, batch, generator)
            digests[f"prior_{level}"] = file_digest(model_dir.path / PRIOR_WEIGHTS[level])
    manifest = {"files": files, "weights": digests, "fingerprint": spec.fingerprint}
    runtime = OnnxModel(model_dir, "cpu", manifest=manifest, onnx_dir=out)
    manifest["parity"] = check_parity(runtime, vqvae, priors, config, batch, generator)
    return manifest


def _export_prior(prior, level: str, out: Path, opset: int, batch: int, generator) -> dict:
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
                                     {"condition": {0: "batch"}, "condition_features": {1: "batch"}}, opset)
        with torch.no_grad():
            step_extra.append(ConditionGraph(prior)(condition))
        step_names.append("condition_features")
    graph = StepGraph(prior)
    entry.update(_export_step(prior, graph, level, out, opset, batch, generator, step_extra, step_names))
    entry["embed"] = _export_embed(prior, graph, level, out, opset, batch, generator)
    return entry


def _export_step(prior, graph: StepGraph, level: str, out: Path, opset: int, batch: int, generator, step_extra: list,
                 step_names: list[str]) -> dict:
    """The manifest entries of the cached sampler's graphs: the step (`StepGraph`) and, in raster order, the row
    graph (`RowGraph`). step_extra/step_names: the labels and condition features the step reads, if any."""
    config = prior.config
    grid_channels, attention_channels, row_channels = graph.grid_channels, graph.attention_channels, graph.row_channels
    layout, positions = graph.layout, config.height * config.width
    taps = len(layout.window_offsets())
    # example inputs: any in-range cells will do for tracing (the runtime's layout: see `skinaug.onnx.runtime`)
    slots = 1 if graph.rows_above else 2
    raster = torch.tensor([config.width + 1, 0][:slots]).clamp(max=positions - 1)
    windows = torch.randint(positions + 1, (slots, taps), generator=generator)
    caches = [torch.randn(positions + 1, batch, c, generator=generator) for c in grid_channels]
    for c in attention_channels:
        caches += [torch.randn(int(raster[0]) + 1, batch, c, generator=generator) for _ in range(2)]
    sums = [torch.randn(layout.width, batch, c, generator=generator) for c in row_channels]
    grid_names = [f"grid_{i}" for i in range(len(grid_channels))]
    kv_names = [f"{kind}_{a}" for a in range(len(attention_channels)) for kind in ("keys", "values")]
    above_names = [f"above_{k}" for k in range(len(row_channels))]
    row_names = [f"rows_{i}" for i in range(1, len(grid_channels))]
    new_kv_names = [f"{kind}_{a}" for a in range(len(attention_channels)) for kind in ("key", "value")]
    dynamic = {"raster": {0: "slots"}, "windows": {0: "slots"}, "logits": {0: "batch_slots"}}
    dynamic.update({name: {0: "slots", 1: "batch"} for name in row_names})
    dynamic.update({name: {0: "batch"} for name in new_kv_names})
    dynamic.update({name: {0: "batch"} for name in step_names})
    if config.conditioned:
        dynamic["condition_features"] = {1: "batch"}
    dynamic.update({name: {1: "batch"} for name in grid_names + above_names})
    dynamic.update({name: {0: "prefix", 1: "batch"} for name in kv_names})
    entry = {"step": _export(graph, (raster, windows, *step_extra, *caches, *sums), out / f"prior_{level}_step.onnx",
                             ["raster", "windows", *step_names, *grid_names, *kv_names, *above_names],
                             ["logits", *row_names, *new_kv_names], dynamic, opset)}
    entry["step"].update(grids=grid_channels, attention=attention_channels, above=row_channels,
                         kernel_size=config.kernel_size, schedule="raster" if graph.rows_above else "wavefront",
                         skew=prior.wavefront_skew, own_code=bool(graph.code_readers))
    if graph.rows_above:
        row_windows = torch.randint(positions + 1, (layout.width, layout.r * config.kernel_size), generator=generator)
        entry["row"] = _export(RowGraph(graph), (row_windows, *caches[: len(grid_channels)]),
                               out / f"prior_{level}_row.onnx", ["row_windows", *grid_names], above_names,
                               {name: {1: "batch"} for name in grid_names + above_names}, opset)
    return entry


def _export_embed(prior, graph: StepGraph, level: str, out: Path, opset: int, batch: int, generator) -> dict:
    """The embed graph (`EmbedGraph`): with own-code attention, one code per step completes its keys and values."""
    readers = graph.code_readers  # attention layer a is the a-th key/value cache (each makes its cache, then registers)
    codes = torch.randint(prior.config.codebook_size, (1 if readers else 2, batch), generator=generator)
    kinds = [(a, kind) for a in range(len(readers)) for kind in ("key", "value")]
    partial = [torch.randn(batch, graph.attention_channels[a], generator=generator) for a, _ in kinds]
    inputs, outputs = [f"partial_{kind}_{a}" for a, kind in kinds], [f"{kind}_{a}" for a, kind in kinds]
    dynamic = {"codes": {0: "slots", 1: "batch"}, "embedded": {0: "slots", 1: "batch"}}
    dynamic.update({name: {0: "batch"} for name in inputs + outputs})
    return _export(EmbedGraph(prior, readers), (codes, *partial), out / f"prior_{level}_embed.onnx",
                   ["codes", *inputs], ["embedded", *outputs], dynamic, opset)


# ----------------------------------------------------------------------------------------------- parity


def check_parity(runtime, vqvae, priors: dict, config: dict, batch: int, generator) -> dict:
    """onnxruntime against PyTorch on random inputs; raises SkinaugError naming the graph that disagrees.

    Images and logits: max absolute difference within LOGIT_TOLERANCE. Code maps: the same code on at least
    CODE_AGREEMENT of positions (argmin near-ties may fall either way). Sampling: the cached onnx sampler against
    `skinaug.priors.sample` with the same uniforms: logits within tolerance, codes equal on CODE_AGREEMENT."""
    from ..priors import sample

    figures: dict = {}
    spec = runtime.spec
    size = spec.image_size
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad():
        _, torch_codes, _ = vqvae.encode(images)
    onnx_codes = runtime.vqvae.encode_float(images.numpy())
    agreement = min(float((onnx_codes[lv] == torch_codes[lv].numpy()).mean()) for lv in torch_codes)
    figures["encoder_code_agreement"] = agreement
    _require(agreement >= CODE_AGREEMENT, f"encoder: codes agree on {agreement:.4%} of positions")
    codes = {lv: torch.randint(spec.codebook_size, (batch, *spec.grid[lv]), generator=generator) for lv in torch_codes}
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
