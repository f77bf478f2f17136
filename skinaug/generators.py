"""`synthesize` and `augment` for any generator directory: a VQ-VAE-2 with priors (skinaug.generate) or a baseline
generator (skinaug.baselines), which decodes noise and has no codes.

The dispatch lives here, above both, because the baselines write their datasets with skinaug.generate's plans and
jobs: generate itself never imports them."""

from __future__ import annotations

from . import generate
from .errors import UsageError
from .modeldir import baseline_arch, model_location
from .output import check_streaming


def synthesize(out, *, model=None, top_k=None, backend=None, bf16=False, compile_step=False, sampler="fast",
               **arguments) -> dict:
    """generate.synthesize's parameters; a baseline takes class_name, n, per_class, temperature, device, seed,
    batch_size, image_format, quality, overwrite, resume and jsonl."""
    model = model_location(model)
    if _is_baseline(model, backend=backend, top_k=top_k, bf16=bf16, compile_step=compile_step, sampler=sampler):
        from .baselines import synthesize as baseline

        check_streaming(out, arguments.get("jsonl", False), arguments.get("overwrite", False))
        return baseline.synthesize(model, out, **arguments)
    return generate.synthesize(out, model=model, top_k=top_k, backend=backend, bf16=bf16, compile_step=compile_step,
                               sampler=sampler, **arguments)


def augment(data, out, *, model=None, methods="mix,resample,synthesize", classic_config=None, no_originals=False,
            link_originals=False, copy_originals=False, top_k=None, backend=None, bf16=False, compile_step=False, image_col=None,
            label_col=None, group_col=None, **arguments) -> dict:
    """generate.augment's parameters; a baseline generator makes `synthesize` (and `classic`) images only."""
    model = model_location(model)
    if not _is_baseline(model, backend=backend, top_k=top_k, bf16=bf16, compile_step=compile_step):
        return generate.augment(data, out, model=model, methods=methods, classic_config=classic_config,
                                no_originals=no_originals, link_originals=link_originals,
                                copy_originals=copy_originals, top_k=top_k, backend=backend,
                                bf16=bf16, compile_step=compile_step, image_col=image_col, label_col=label_col,
                                group_col=group_col, **arguments)
    from .baselines import synthesize as baseline

    check_streaming(out, arguments.get("jsonl", False), arguments.get("overwrite", False))
    weights, transforms = generate.augment_methods(methods, classic_config)
    return baseline.augment(
        model, data, out, weights=weights, originals=not no_originals,
        link_originals=generate.linking_originals(link_originals, copy_originals, no_originals),
        columns={"image_col": image_col, "label_col": label_col, "group_col": group_col}, classic_transforms=transforms,
        classic_config=generate.file_record(classic_config) if classic_config is not None else None, **arguments)


def _is_baseline(model, *, backend=None, top_k=None, bf16=False, compile_step=False, sampler="fast") -> bool:
    """Whether `model` is a baseline generator; the priors' sampling options do not apply to one."""
    arch = baseline_arch(model) if model is not None else None
    if arch is None:
        return False
    given = [name for name, on in (("{backend='onnx'}", backend == "onnx"), ("{top_k}", top_k is not None),
                                   ("{bf16}", bf16), ("{compile_step}", compile_step),
                                   ("{sampler='reference'}", sampler != "fast")) if on]
    if given:
        raise UsageError(f"{', '.join(given)} set how the priors sample codes; {model} is a {arch} baseline generator, "
                         "which decodes noise (PyTorch only)")
    return True
