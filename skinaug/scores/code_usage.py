"""The skin-lesion paper's Table 2 columns for a code file: used codes per level, co-occurring (top, bottom)
pairs, perplexities, and the model's reconstruction MSE when the model and the images are given."""

from __future__ import annotations

from ..backends.torch import TorchCodeModel
from ..storage.codefile import code_statistics, read_codes
from ..generation.encode_decode import dataset_for_model
from ..errors import SkinaugError, UsageError
from ..storage.image_cache import decode_in_chunks
from ..storage.modeldir import ModelDir
from ..runtime import log


def reconstruction_mse(model, data, labels=None, *, device="auto", batch_size=64, strict=False, workers=None, **columns) -> tuple[float, int]:
    """Mean squared error on [0, 1] pixels of the model's reconstructions of DATA, and the image count."""
    code_model = TorchCodeModel(ModelDir(model), device)
    spec = code_model.spec
    dataset = dataset_for_model(data, labels, spec, strict=strict, **columns)
    squared_error, count = 0.0, 0
    for images, kept in decode_in_chunks(dataset.samples, spec.image_size, strict=strict, workers=workers):
        for start in range(0, len(kept), batch_size):
            squared_error += code_model.encode_with_error(images[start : start + batch_size])[1]
            count += len(kept[start : start + batch_size])
    if count == 0:
        raise SkinaugError(f"no image in {data} could be read")
    return squared_error / (count * 3 * spec.image_size**2), count


def score_codes(codes_path, *, model=None, data=None, labels=None, device="auto", batch_size=64, strict=False,
                workers=None, **columns) -> dict:
    if (model is None) != (data is None):
        raise UsageError("the reconstruction MSE needs both {model} and {data} (or neither)")
    code_file = read_codes(codes_path)
    codebook_size = int(code_file.attrs["codebook_size"])
    stats = {"codes": str(codes_path), "images": len(code_file), "codebook_size": codebook_size,
             "code_dim": int(code_file.attrs.get("code_dim", 0)), "model_fingerprint": code_file.fingerprint,
             **code_statistics(code_file.codes, codebook_size)}
    for level, values in code_file.codes.items():
        stats[f"grid_{level}"] = list(values.shape[1:])
    if model is not None:
        code_file.check_model(ModelDir(model).spec())
        log(f"reconstructing {data} with {model} for the MSE")
        stats["mse"], stats["mse_images"] = reconstruction_mse(model, data, labels, device=device, batch_size=batch_size,
                                                               strict=strict, workers=workers, **columns)
    return stats

