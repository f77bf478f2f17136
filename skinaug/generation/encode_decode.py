"""Images <-> code maps with a trained VQ-VAE: `skinaug encode` and `skinaug decode`, and DATA's codes in memory.

The VQ-VAE runs as a `backends.base.CodeModel`, the `code_model` of the backend `open_backend` opens:
`backends.torch.TorchCodeModel`, or `onnx.runtime.OnnxVQVAE` (`--backend onnx`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..backends import open_backend
from ..backends.base import CodeModel
from ..storage.codefile import CodeFile, CodeWriter, code_statistics, model_attrs, read_codes
from ..data.scan import Intake, scan_dataset
from ..errors import SkinaugError
from ..storage.image_cache import decode_in_chunks
from ..storage.fs import CODE_FILE, atomic_path, claim_output
from ..data.layout import plan_layout, plan_size
from ..storage.modeldir import ModelDir
from ..naming import unique_names
from ..storage.writer import DatasetWriter, check_streaming
from ..runtime import progress, resolve_backend
from ..spec import ModelSpec
from .sampler import OutputOptions, RunOptions


def dataset_for_model(data, labels, spec: ModelSpec | dict, **scan_options):
    """Scans DATA with the model's class names fixed, so label indices mean the same everywhere."""
    class_names = list(ModelSpec.of(spec).class_names) or None
    return scan_dataset(data, labels, class_names=class_names, **scan_options)


def codes_from_images(code_model: CodeModel, data, labels=None, batch_size=64, **scan_options) -> CodeFile:
    """DATA encoded in memory (no file written) into the structure `read_codes` returns, with each image's file."""
    spec = code_model.spec
    dataset = dataset_for_model(data, labels, spec, **scan_options)
    codes: dict[str, list[np.ndarray]] = {level: [] for level in spec.level_names}
    kept = []
    for images, chunk in decode_in_chunks(dataset.samples, spec.image_size):
        for start in range(0, len(chunk), batch_size):
            for level, values in code_model.encode(images[start : start + batch_size]).items():
                codes[level].append(values)
        kept.extend(chunk)
    if not kept:
        raise SkinaugError(f"no image in {data} could be read")
    attrs = {**model_attrs(spec), "class_names": json.dumps(dataset.class_names)}
    return CodeFile(Path(str(data)), attrs, {k: np.concatenate(v) for k, v in codes.items()},
                    [s.name for s in kept], np.array([s.label for s in kept]), [s.group for s in kept],
                    files={s.name: s.path for s in kept})


def encode_dataset(data, out, *, model, labels=None, device="auto", batch_size=64, overwrite=False,
                   strict=False, workers=None, backend=None, **columns) -> dict:
    """Writes CODES.h5 for every readable image in DATA; returns the Table 2 statistics."""
    model_dir = ModelDir(model)
    spec = model_dir.spec()
    backend = resolve_backend(backend)
    dataset = dataset_for_model(data, labels, spec, strict=strict, **columns)  # warns about what it leaves out
    unreadable: list[tuple[str, str]] = []
    claim = claim_output(out, kind=CODE_FILE, inputs=(data, labels, model_dir.path), overwrite=overwrite)
    code_model = open_backend(model_dir, device, resolve_backend(backend)).code_model
    attrs = {**model_attrs(spec), "class_names": json.dumps(dataset.class_names)}
    started = time.perf_counter()
    all_codes: dict[str, list[np.ndarray]] = {level: [] for level in spec.grid}
    count = pixels = 0
    squared_error = 0.0
    with claim, atomic_path(claim.work) as tmp, CodeWriter(tmp, attrs, spec.grid) as writer:
        for images, kept in decode_in_chunks(dataset.samples, spec.image_size, strict=strict, workers=workers,
                                             skipped_out=unreadable):
            for start in range(0, len(kept), batch_size):
                batch = kept[start : start + batch_size]
                codes, error = code_model.encode_with_error(images[start : start + batch_size])
                squared_error += error
                writer.append(codes, [s.name for s in batch], [s.label for s in batch], [s.group for s in batch])
                for level, values in codes.items():
                    all_codes[level].append(values)
                count += len(batch)
                pixels += len(batch) * 3 * spec.image_size**2
        if count == 0:
            raise SkinaugError(f"no image in {data} could be read")
    stats = {
        "codes": str(out),
        "images": count,
        "skipped": len(dataset.skipped) + len(dataset.samples) - count,
        "input": Intake.of(dataset, unreadable).summary(),
        **code_statistics({k: np.concatenate(v) for k, v in all_codes.items()}, spec.codebook_size),
        "mse": squared_error / pixels,
        "images_per_s": count / (time.perf_counter() - started),
        **code_model.info(),
    }
    return stats


def decode_codes(codes_path, out, *, model, run: RunOptions | None = None, output: OutputOptions | None = None) -> dict:
    """The paper's 'reconstruction' set: every code map decoded, in the generated-dataset layout (output.layout: images/
    or one folder per class, skinaug/layout.py), at output.image_size (None: the model's). `run`: device, backend and
    batch size (the other settings of RunOptions and OutputOptions do not apply)."""
    run, output = run or RunOptions(), output or OutputOptions()
    check_streaming(out, output.jsonl, output.overwrite)
    model_dir = ModelDir(model)
    spec = model_dir.spec()
    code_file = read_codes(codes_path)
    code_file.check_model(spec)
    if not code_file.names_recorded:  # its labels can only be the model's classes (said once, with a warning)
        code_file = code_file.relabel(spec.class_names)
    code_model = open_backend(model_dir, run.device, resolve_backend(run.backend)).code_model
    class_names = code_file.class_names
    batch_size = run.batch_size
    plan = {"command": "decode", "codes": str(Path(codes_path).resolve()), "n": len(code_file), "batch_size": batch_size,
            "format": output.image_format, **plan_layout(output.layout, code_file.labels),
            **plan_size(output.image_size, spec.image_size)}
    writer = DatasetWriter(out, model_config=spec, plan=plan, overwrite=output.overwrite, resume=output.resume,
                           image_format=output.image_format, quality=output.quality, inputs=(codes_path, model_dir.path),
                           model_dir=model_dir.path, jsonl=output.jsonl)  # the VQ-VAE made these images: its training record goes with them
    done = writer.done_batches()
    file_names = unique_names(f"{name}_rec" for name in code_file.images)  # names in a code file may be anything
    with progress(len(code_file), desc="decoding codes") as bar:
        for batch_index, start in enumerate(range(0, len(code_file), batch_size)):
            stop = min(start + batch_size, len(code_file))
            if batch_index not in done:
                codes = {level: values[start:stop] for level, values in code_file.codes.items()}
                rows = [{
                    "image": file_name,
                    "label": class_names[label] if 0 <= label < len(class_names) else "",
                    "method": "reconstruction", "source_top": name, "source_bottom": name,
                    "temperature": "", "seed": "", "model_fingerprint": spec.fingerprint, "group": group,
                } for file_name, name, label, group in zip(file_names[start:stop], code_file.images[start:stop],
                                                           code_file.labels[start:stop], code_file.groups[start:stop])]
                writer.write_batch(batch_index, code_model.decode(codes), rows, codes)
            bar.update(stop - start)
    return writer.finish(command="decode", seed=None, device=code_model.device_name, extra=code_model.info())
