"""The onnx backend: the exported graphs run by onnxruntime, the sampling loop in numpy. Never imports torch.

Providers: CUDA then CPU (`--device auto`), CPU only (`--device cpu`), CUDA device N then CPU (`--device cuda:N`).
onnxruntime drops a provider it cannot start without a word; `OnnxModel` says so on stderr when CUDA was asked for
and the session ended up elsewhere, and reports the provider actually used.

Sampling draws codes with `skinaug.sampling.draw_codes`, the numpy twin of `skinaug.priors.sampling.draw_codes`
(inverse CDF with pre-drawn uniforms), so given the same uniforms the onnx and torch samplers draw the same codes, up
to positions where a uniform falls within float rounding of a CDF step. Seeded runs draw their uniforms from numpy's Generator rather than torch's:
onnx-backend samples are reproducible per seed but differ from torch-backend samples of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import PIXEL_SCALE, CodeModel, PriorSampler, check_draw_args
from ..errors import SkinaugError, first_line
from ..storage.modeldir import PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir
from ..runtime import log, usable_cpus, warn
from ..sampling import draw_codes, sampling_steps
from ..spec import ModelSpec

ONNX_DIR = "onnx"
OPSET = 17
# the graphs' contract with this module; 2: caches bound in place (IOBinding), row and embed graphs, wavefront steps
EXPORT_FORMAT = 2

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SkinaugError("{backend='onnx'} needs onnxruntime: pip install 'skinaug[onnx]' (or 'skinaug[onnx-gpu]')") from None
    return onnxruntime


def requested_providers(device: str, available: list[str]) -> list:
    """The provider list for --device, CUDA first where it may be used."""
    name = device or "auto"
    if name == "cpu":
        return [CPU]
    if name == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise SkinaugError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
        return [(CUDA, {"device_id": int(index or 0)}), CPU]
    raise SkinaugError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")


def session_device(session) -> tuple[str, int]:
    """(device type, device id) for IOBinding: where the session runs, so caches live next to its kernels."""
    provider = session.get_providers()[0]
    if provider == CUDA:
        return "cuda", int(session.get_provider_options().get(CUDA, {}).get("device_id", 0))
    return "cpu", 0


def file_digest(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _recorded_entry(files, file: str) -> dict | None:
    """The manifest's record ({"file", "inputs", "outputs"}) of the graph in `file`, wherever it is nested."""
    if isinstance(files, dict):
        if files.get("file") == file and "outputs" in files and "inputs" in files:
            return files
        values = files.values()
    elif isinstance(files, list):
        values = files
    else:
        return None
    for value in values:
        found = _recorded_entry(value, file)
        if found is not None:
            return found
    return None


class OnnxModel:
    """A model directory's exported graphs: one onnxruntime session per graph, opened on first use."""

    model_dir: ModelDir | None = None  # both set in __init__
    manifest: dict | None = None  # what `export onnx` recorded

    def __init__(self, model, device: str = "auto", *, manifest: dict | None = None, onnx_dir=None):
        self.ort = import_onnxruntime()
        self.model_dir = model if isinstance(model, ModelDir) else ModelDir(model)
        self.config = self.model_dir.config()
        self.spec = ModelSpec.from_config(self.config)
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else self.model_dir.path / ONNX_DIR
        if manifest is None:
            manifest = self.config.get("onnx")
            if not manifest or not self.onnx_dir.is_dir():
                raise SkinaugError(f"{self.model_dir.path} has no ONNX export: run {self._export_advice()}")
            self._check_fresh(manifest)
        self.manifest = manifest
        self.device = device or "auto"
        self.providers = requested_providers(self.device, self.ort.get_available_providers())
        self._sessions: dict = {}
        self.provider: str | None = None
        self._priors: dict = {}

    def _export_advice(self, again: bool = False) -> str:
        """The export command that works: a shipped model is read-only, so its graphs go into a model dir of its own."""
        from ..storage.fs import is_shipped
        from ..runtime import torch_installed

        path, where = self.model_dir.path, "" if torch_installed() else " where PyTorch is installed"
        if is_shipped(path):
            return (f"`skinaug export onnx --model {path.name} --out {path.name}-onnx`{where} (a shipped model is "
                    f"read-only), then use --model {path.name}-onnx")
        return f"`skinaug export onnx --model {path}{' --overwrite' if again else ''}`{where}"

    def _check_fresh(self, manifest: dict) -> None:
        """An export made from other weights than the ones in the folder now, or by a skinaug whose graphs this
        runtime does not drive, is stale: say how to refresh it."""
        if manifest.get("format", 1) != EXPORT_FORMAT:
            raise SkinaugError(f"{self.onnx_dir} was exported by another version of skinaug: run "
                               f"{self._export_advice(again=True)}")
        weights = {"vqvae": VQVAE_WEIGHTS, **{f"prior_{lv}": name for lv, name in PRIOR_WEIGHTS.items()}}
        for key, digest in manifest.get("weights", {}).items():
            path = self.model_dir.path / weights[key]
            if not path.is_file() or file_digest(path) != digest:
                raise SkinaugError(f"{self.onnx_dir} was exported from other {weights[key]} weights: run "
                                   f"{self._export_advice(again=True)}")

    def session_options(self, *, spinning: bool = False, threads: int | None = None):
        """One intra-op thread per usable CPU core (or `threads`): `skinaug.runtime.usable_cpus`, the affinity mask
        capped by the cgroup's CPU quota, as for torch. No inter-op pool (the graphs are chains: sequential
        execution), every graph optimisation; onnxruntime's own warnings (e.g. a provider that did not start) stay
        quiet.

        spinning: whether the session's idle worker threads spin, waiting for the next parallel section. Only the
        sampling step gets it (it runs thousands of times in a row): the workers of every other session would spin
        on the same cores while the step runs. On 2 cores, letting every session spin made synthesis at batch 256
        1.7x slower (3.3 s against 1.97 s for the 64px priors)."""
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return options

    def session(self, file: str, *, spinning: bool = False, threads: int | None = None):
        """The graph's session, opened on first use (with `session_options(spinning, threads)`)."""
        if file not in self._sessions:
            session = self._open(file, self.session_options(spinning=spinning, threads=threads))
            used = session.get_providers()[0]
            if self.provider is None:
                wanted = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
                if wanted == CUDA and used != CUDA:
                    warn(f"onnxruntime could not use {CUDA} and fell back to {used}")
                elif self.device.startswith("cuda") and CUDA not in self.ort.get_available_providers():
                    warn(f"{{device}} {self.device}: this onnxruntime has no {CUDA} (install skinaug[onnx-gpu]); using {used}")
                log(f"backend onnx: onnxruntime {self.ort.__version__} on {used}")
            self.provider = used
            self._sessions[file] = session
        return self._sessions[file]

    def _open(self, file: str, options):
        """A session on one graph of the export, refused in one line when the file is missing, cannot be loaded
        (truncated, not ONNX, external data that onnxruntime will not read) or is not the graph the manifest
        recorded under that name (files swapped or replaced)."""
        path = self.onnx_dir / file
        model = self.model_dir.path if self.model_dir is not None else self.onnx_dir.parent
        remedy = f"run `skinaug export onnx --model {model} --overwrite`"
        if not path.is_file():
            raise SkinaugError(f"{path} is missing: the ONNX export in {self.onnx_dir} is incomplete; {remedy}")
        try:
            session = self.ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as error:  # noqa: BLE001  (onnxruntime's own error classes, one per kind of fault)
            raise SkinaugError(f"onnxruntime cannot load {path}: {first_line(error)}; the export is damaged: {remedy}") from None
        entry = _recorded_entry((self.manifest or {}).get("files", {}), file)
        outputs = [output.name for output in session.get_outputs()]
        inputs = {graph_input.name for graph_input in session.get_inputs()}
        if entry is not None and (outputs != list(entry["outputs"]) or not inputs <= set(entry["inputs"])):
            raise SkinaugError(f"{path} is not the graph the export recorded under that name (it computes "
                               f"{', '.join(outputs)}, not {', '.join(entry['outputs'])}): {remedy}")
        return session

    @property
    def device_name(self) -> str:
        """'cuda' or 'cpu', as the torch backend would name the device (for run.json)."""
        self.session(self.manifest["files"]["decoder"]["file"])
        return "cuda" if self.provider == CUDA else "cpu"

    def info(self) -> dict:
        """What run.json and --json report: the backend and the provider actually used."""
        self.session(self.manifest["files"]["decoder"]["file"])
        return {"backend": "onnx", "provider": self.provider}

    def run(self, entry: dict, feeds: dict) -> list[np.ndarray]:
        return self.session(entry["file"]).run(None, feeds)

    @property
    def vqvae(self) -> "OnnxVQVAE":
        return OnnxVQVAE(self)

    def prior(self, level: str) -> "OnnxPrior":
        if level not in self._priors:
            entry = self.manifest["files"].get(f"prior_{level}")
            if entry is None:
                raise SkinaugError(f"{self.onnx_dir} has no {level} prior: train it, then run "
                                   f"`skinaug export onnx --model {self.model_dir.path} --overwrite`")
            self._priors[level] = OnnxPrior(self, entry, self.config.get("priors", {}).get(level, {}).get("classes"))
        return self._priors[level]


class OnnxVQVAE(CodeModel):
    """The VQ-VAE's `CodeModel` through encoder.onnx and decoder.onnx (`backends.torch.TorchCodeModel`'s twin)."""

    def __init__(self, model: OnnxModel):
        self.model, self.spec = model, model.spec
        self.levels = ["top", "bottom"] if model.spec.levels == 2 else ["bottom"]  # the graphs' output order

    @property
    def device_name(self) -> str:
        return self.model.device_name

    def info(self) -> dict:
        return self.model.info()

    def encode_float(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float (B, 3, S, S) in [-1, 1] -> code maps per level (int64)."""
        return self._encode(images)[0]

    def _encode(self, images: np.ndarray):
        outputs = self.model.run(self.model.manifest["files"]["encoder"], {"images": np.ascontiguousarray(images, np.float32)})
        return dict(zip(self.levels, outputs[:-1])), outputs[-1]

    def encode_with_error(self, images_uint8: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """uint8 (B, S, S, 3) -> (code maps per level as uint16, squared error sum on [0, 1] pixels)."""
        images = np.asarray(images_uint8).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(PIXEL_SCALE) - np.float32(1.0)
        codes, squared_error = self._encode(images)
        return ({level: values.astype(np.uint16) for level, values in codes.items()},
                float(squared_error.astype(np.float64).sum()))

    def decode_float(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {f"codes_{level}": np.ascontiguousarray(codes[level], np.int64) for level in self.levels}
        return self.model.run(self.model.manifest["files"]["decoder"], feeds)[0]

    def decode(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Code maps per level (B, H, W) -> uint8 images (B, S, S, 3), rounded like `skinaug.vqvae.to_uint8`."""
        pixels = np.clip(np.round((self.decode_float(codes) + np.float32(1.0)) * np.float32(PIXEL_SCALE)), 0, 255)
        return np.ascontiguousarray(pixels.astype(np.uint8).transpose(0, 2, 3, 1))


class OnnxPrior(PriorSampler):
    """A prior's graphs: `logits` (full forward), `sample` (cached steps) and `sample_reference` (full forwards).
    trained_classes: the classes it was trained on (None: every class of the model)."""

    def __init__(self, model: OnnxModel, entry: dict, trained_classes: list[str] | None = None):
        self.model, self.entry, self.trained_classes = model, entry, trained_classes
        self.height, self.width = entry["height"], entry["width"]
        self.codebook_size, self.num_classes = entry["codebook_size"], entry["num_classes"]
        self._buffers: dict = {}  # (shape, device) -> OrtValue, kept from one sampling call to the next
        self._schedule = None

    def _zeros(self, key: tuple, shape: tuple, device: str, device_id: int):
        """A float32 buffer on the device, zeroed. Reused across calls of the same batch size: fresh memory costs a
        page fault per 4 KiB page on first write (a sizeable share of a step on the CPU); zeroing it again is one
        copy per call."""
        ort, zeros = self.model.ort, np.zeros(shape, np.float32)
        value = self._buffers.get(key)
        if value is None or tuple(value.shape()) != tuple(shape) or value.device_name() != device:
            value = ort.OrtValue.ortvalue_from_numpy(zeros, device, device_id)
            self._buffers[key] = value
        else:
            value.update_inplace(zeros)
        return value

    def _extra(self, labels, condition, batch: int) -> dict:
        feeds = {}
        if self.entry["num_classes"]:
            if labels is None or np.shape(labels) != (batch,):
                raise SkinaugError(f"this prior is class-conditional: give labels of shape ({batch},)")
            feeds["labels"] = np.asarray(labels, np.int64)
        if self.entry["conditioned"]:
            if condition is None:
                raise SkinaugError("this prior is conditioned on the top codes: give condition")
            feeds["condition"] = np.asarray(condition, np.int64)
        return feeds

    def logits(self, codes: np.ndarray, labels=None, condition=None) -> np.ndarray:
        """codes (B, rows, W) -> logits (B, K, rows, W)."""
        feeds = {"codes": np.asarray(codes, np.int64), **self._extra(labels, condition, len(codes))}
        return self.model.run(self.entry["full"], feeds)[0]

    def schedule(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(steps, windows, row windows) of the step graph's schedule and cell layout.

        steps: the raster positions of each step (`skinaug.sampling.sampling_steps`, which the torch sampler's
        `GridLayout.plan` follows too: raster order with attention, else the wavefront). Cells: 0 is a zero cell that
        every padding tap reads, then one cell per position in the order they are sampled, so a step's positions are
        one contiguous block of cells. windows: (H * W, taps) the cells of each position's window, in the packed weights' tap order. row windows:
        (H, W, r * k) the cells of the above taps of every position of each row."""
        if self._schedule is None:
            step = self.entry["step"]
            height, width, r = self.height, self.width, step["kernel_size"] // 2
            steps = [np.array(members) for members in sampling_steps(height, width, step.get("skew"))]
            cell = np.zeros((height + 2 * r, width + 2 * r), np.int64)  # 0 around the grid: the zero cell
            order = np.concatenate(steps)
            cell[order // width + r, order % width + r] = np.arange(1, len(order) + 1)
            offsets = [(dy, dx) for dy in range(-r, 0) for dx in range(-r, r + 1)] + [(0, dx) for dx in range(-r, 1)]
            rows, cols = np.divmod(np.arange(height * width), width)
            windows = np.stack([cell[rows + dy + r, cols + dx + r] for dy, dx in offsets], axis=1)
            above = windows[:, : r * (2 * r + 1)].reshape(height, width, -1)
            self._schedule = (steps, windows, above)
        return self._schedule

    def sample(self, labels=None, condition=None, *, n: int, temperature: float = 1.0, top_k: int | None = None,
               uniforms: np.ndarray | None = None, rng: np.random.Generator | None = None, keep=None,
               return_logits: bool = False):
        """Codes (B, H, W) int64 by the cached per-step graph (see `skinaug.priors.fast`); the same codes as the torch
        `sample` given the same uniforms. keep: (codes, mask) as there.

        The schedule is the torch sampler's (`schedule`). The caches are onnxruntime buffers on the session's device,
        bound with IOBinding and never copied: a step reads whole grids (cell-major, (cells, B, C)) and the valid
        prefix of each key/value cache, and its outputs, the new grid entries and key/value, are bound straight into
        the caches at the step's cells and slot. The drawn codes' embeddings go into grid 0 through the embed graph
        the same way. In raster order, at the start of each image row, the row graph sums every conv's taps on the
        rows above for the whole row (one large matmul per conv) into buffers that the row's steps read, so a step
        gathers only the taps to its left. Only the logits come back to the host, where codes are drawn. Keys that see
        their own code wait for it: the embed graph completes them on their way into the cache (`EmbedGraph`)."""
        check_draw_args(temperature, top_k)
        positions = self.height * self.width
        uniforms = self._uniforms(uniforms, rng, n, positions)
        kept_codes, kept = self._keep(keep, n)
        steps, windows, row_windows = self.schedule()
        run = self._bind(n, self._extra(labels, condition, n), max(len(members) for members in steps))
        codes = np.zeros((n, positions), np.int64)
        logits_out = np.zeros((n, positions, self.codebook_size), np.float32) if return_logits else None
        cell = 1
        for members in steps:
            slots = len(members)
            step_logits = run.step(members, cell, windows, row_windows)  # image-major: (n, slots)
            drawn = draw_codes(step_logits, uniforms[:, members].reshape(-1), temperature, top_k).reshape(n, slots)
            if kept is not None:
                drawn = np.where(kept[:, members], kept_codes[:, members], drawn)
            codes[:, members] = drawn
            if logits_out is not None:
                logits_out[:, members] = step_logits.reshape(n, slots, -1)
            run.embed_codes(drawn, cell)
            cell += slots
        codes = codes.reshape(n, self.height, self.width)
        if not return_logits:
            return codes
        return codes, logits_out.transpose(0, 2, 1).reshape(n, -1, self.height, self.width)

    def _bind(self, n: int, extra: dict, widest: int) -> "_StepRun":
        """The step and embed graphs' sessions with their caches bound, ready for `_StepRun.step`."""
        step = self.entry["step"]
        # the step spins between runs; the embedding lookup is too small for a second thread
        session = self.model.session(step["file"], spinning=True)
        embed = self.model.session(self.entry["embed"]["file"], threads=1)
        device, device_id = session_device(session)

        def buffer(key, shape) -> object:  # zeros: the zero cell and the dummy key/value slot stay zero
            return self._zeros(key, shape, device, device_id)

        binding, wanted = session.io_binding(), set(step["inputs"])
        if "labels" in wanted:
            binding.bind_ortvalue_input("labels", self.model.ort.OrtValue.ortvalue_from_numpy(extra["labels"], device,
                                                                                             device_id))
        if "condition" in extra and "condition_features" in wanted:
            binding.bind_ortvalue_input("condition_features", self._condition_features(extra["condition"], device, device_id))
        grids, key_values = self._caches(buffer, binding, wanted, n)
        # raster order: the convs' above-tap sums of the current row, written by the row graph and read by the
        # steps; zero for row 0, whose rows above are padding
        sums = [buffer(("above", k), (self.width, n, channels)) for k, channels in enumerate(step["above"])]
        rows = self._row_graph(grids, sums, binding, wanted) if sums else None
        embed_binding = embed.io_binding()
        own_code = step.get("own_code", False)  # keys that see their own code: completed by the embed graph
        if own_code:
            self._bind_partial(binding, embed_binding, key_values, buffer)
        return _StepRun(self, session, binding, embed, embed_binding, grids, key_values, rows, wanted, own_code,
                        device, device_id, n, np.empty((n * widest, self.codebook_size), np.float32))

    def _caches(self, buffer, binding, wanted: set, n: int) -> tuple[list, list]:
        """The grids, bound as the step's inputs, and the key/value caches with their channels, all zeroed:
        (positions + 1, n, C) each (a zero cell, or a dummy slot, then one per position)."""
        step, blocks = self.entry["step"], self.height * self.width + 1
        grids = [buffer(("grid", i), (blocks, n, channels)) for i, channels in enumerate(step["grids"])]
        for index, grid in enumerate(grids):
            if f"grid_{index}" in wanted:
                binding.bind_ortvalue_input(f"grid_{index}", grid)
        key_values = [(buffer(("keys", a), (blocks, n, channels)), buffer(("values", a), (blocks, n, channels)), channels)
                      for a, channels in enumerate(step["attention"])]
        return grids, key_values

    @staticmethod
    def _bind_key_values(binding, output_binding, key_values: list, wanted: set, first: int, n: int, device: str,
                         device_id: int) -> None:
        """A step's key/value caches (one position per step, p = first): the valid prefix, slots 0 (a dummy) .. p, as
        inputs; slot p + 1 where the position's key and value land, as outputs of `output_binding` (the step's, or
        the embed graph's when keys see their own code)."""
        size = np.dtype(np.float32).itemsize
        for a, (keys, values, channels) in enumerate(key_values):
            for kind, cache in (("keys", keys), ("values", values)):
                if f"{kind}_{a}" in wanted:
                    binding.bind_input(f"{kind}_{a}", device, device_id, np.float32, [first + 1, n, channels],
                                       cache.data_ptr())
                output_binding.bind_output(f"{kind[:-1]}_{a}", device, device_id, np.float32, [n, channels],
                                           cache.data_ptr() + (first + 1) * n * channels * size)

    def _condition_features(self, condition: np.ndarray, device: str, device_id: int):
        """The condition stack's output for the step graph, left on the device (an OrtValue)."""
        stack = self.model.session(self.entry["condition"]["file"])
        stack_binding = stack.io_binding()
        stack_binding.bind_cpu_input("condition", condition)
        stack_binding.bind_output("condition_features", device, device_id)
        stack.run_with_iobinding(stack_binding)
        return stack_binding.get_outputs()[0]

    def _row_graph(self, grids: list, sums: list, binding, wanted: set):
        """The row graph's session and binding: it reads the grids and writes the above-tap sums the steps read."""
        rows = self.model.session(self.entry["row"]["file"])
        row_binding, row_inputs = rows.io_binding(), set(self.entry["row"]["inputs"])
        for index, grid in enumerate(grids):
            if f"grid_{index}" in row_inputs:
                row_binding.bind_ortvalue_input(f"grid_{index}", grid)
        for index, value in enumerate(sums):
            row_binding.bind_ortvalue_output(f"above_{index}", value)
            if f"above_{index}" in wanted:
                binding.bind_ortvalue_input(f"above_{index}", value)
        return rows, row_binding

    @staticmethod
    def _bind_partial(binding, embed_binding, key_values, buffer) -> None:
        """Keys that see their own code: each step's key and value outputs go to a buffer per layer and kind, which
        the embed graph reads and completes with the drawn code (`EmbedGraph`)."""
        for a, (keys, _, channels) in enumerate(key_values):
            for kind in ("key", "value"):
                partial = buffer((f"partial_{kind}", a), (keys.shape()[1], channels))
                binding.bind_ortvalue_output(f"{kind}_{a}", partial)
                embed_binding.bind_ortvalue_input(f"partial_{kind}_{a}", partial)

    def sample_reference(self, labels=None, condition=None, *, n: int, temperature: float = 1.0,
                         top_k: int | None = None, uniforms: np.ndarray | None = None,
                         rng: np.random.Generator | None = None, keep=None) -> np.ndarray:
        """The reference algorithm through the full-forward graph: H * W forwards on the rows so far. Slow; the
        yardstick for `sample`."""
        check_draw_args(temperature, top_k)
        positions = self.height * self.width
        uniforms = self._uniforms(uniforms, rng, n, positions)
        kept_codes, kept = self._keep(keep, n)
        codes = np.zeros((n, positions), np.int64)
        for p in range(positions):
            i, j = divmod(p, self.width)
            logits = self.logits(codes[:, : (i + 1) * self.width].reshape(n, i + 1, self.width), labels, condition)
            codes[:, p] = draw_codes(logits[:, :, i, j], uniforms[:, p], temperature, top_k)
            if kept is not None:
                codes[:, p] = np.where(kept[:, p], kept_codes[:, p], codes[:, p])
        return codes.reshape(n, self.height, self.width)

    @staticmethod
    def _uniforms(uniforms, rng, n: int, positions: int) -> np.ndarray:
        if uniforms is None:
            return (rng or np.random.default_rng()).random((n, positions), dtype=np.float32)
        uniforms = np.asarray(uniforms, np.float32)
        if uniforms.shape != (n, positions):
            raise SkinaugError(f"uniforms must be (batch, H*W) = ({n}, {positions}), not {uniforms.shape}")
        return uniforms

    def _keep(self, keep, n: int):
        if keep is None:
            return None, None
        codes, mask = keep
        return (np.asarray(codes, np.int64).reshape(n, -1), np.asarray(mask, bool).reshape(n, -1))


@dataclass
class _StepRun:
    """One `OnnxPrior.sample` call's bound graphs: runs a step into the logits buffer, then embeds its drawn codes."""

    prior: OnnxPrior
    session: object  # the step graph's, and its IOBinding
    binding: object
    embed: object  # the embed graph's, and its IOBinding
    embed_binding: object
    grids: list  # the caches (OrtValues)
    key_values: list
    rows: tuple | None  # the row graph's session and binding (raster order), else None
    wanted: set  # the step graph's inputs
    own_code: bool
    device: str
    device_id: int
    n: int
    logits: np.ndarray  # (n * widest step, K), on the host

    @property
    def step_entry(self) -> dict:
        return self.prior.entry["step"]

    def at(self, value, index: int, channels: int) -> int:
        """The address of block `index` of a (blocks, n, C) buffer."""
        return value.data_ptr() + index * self.n * channels * np.dtype(np.float32).itemsize

    def step(self, members: np.ndarray, cell: int, windows: np.ndarray, row_windows: np.ndarray) -> np.ndarray:
        """Runs the step of positions `members` (their cells from `cell` on); returns its logits (n * slots, K)."""
        binding, device, device_id, n, width = self.binding, self.device, self.device_id, self.n, self.prior.width
        slots, first = len(members), int(members[0])
        if self.rows is not None and slots == 1 and first % width == 0 and first:  # a new row: sums from rows done
            rows, row_binding = self.rows
            row_binding.bind_cpu_input("row_windows", np.ascontiguousarray(row_windows[first // width]))
            rows.run_with_iobinding(row_binding)
        binding.bind_cpu_input("raster", np.ascontiguousarray(members))
        binding.bind_cpu_input("windows", np.ascontiguousarray(windows[members]))
        for index, (grid, channels) in enumerate(zip(self.grids[1:], self.step_entry["grids"][1:]), start=1):
            binding.bind_output(f"rows_{index}", device, device_id, np.float32, [slots, n, channels],
                                self.at(grid, cell, channels))
        if self.key_values:
            self.prior._bind_key_values(binding, self.embed_binding if self.own_code else binding, self.key_values,
                                        self.wanted, first, n, device, device_id)
        binding.bind_output("logits", "cpu", 0, np.float32, [n * slots, self.prior.codebook_size],
                            self.logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        if device != "cpu":
            binding.synchronize_outputs()
        return self.logits[: n * slots]

    def embed_codes(self, drawn: np.ndarray, cell: int) -> None:
        """The drawn codes (n, slots) into grid 0 at their cells, through the embed graph."""
        channels = self.step_entry["grids"][0]
        self.embed_binding.bind_cpu_input("codes", np.ascontiguousarray(drawn.T))
        self.embed_binding.bind_output("embedded", self.device, self.device_id, np.float32,
                                       [drawn.shape[1], self.n, channels], self.at(self.grids[0], cell, channels))
        self.embed.run_with_iobinding(self.embed_binding)
