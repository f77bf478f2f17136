"""Memorization: each generated image's nearest real image, and the near-copies among them.

Two distances per generated image:
- pixel: RMS difference of [0, 1] RGB values at a small size (default 32px): 0 for an exact copy;
- feature: cosine distance in an embedding, the nearest over the 8 flips/quarter turns of the generated image
  (a rotated copy is still a copy). The default embedding is fixed (a 16px thumbnail, each channel
  standardised, so brightness and contrast shifts do not hide a copy); `embedding="classifier"` uses the
  pooled features of a classifier trained on the real labels.
A generated image is flagged when its pixel distance is at most `threshold` (or its feature distance at most
`feature_threshold`, when given).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import torch

from ..data.scan import load_images
from ..errors import SkinaugError, UsageError
from ..storage.fs import atomic_path, claim_output, marked_folder, write_json, write_text
from ..runtime import log, resolve_device
from .options import ScoreOptions
from .sets import open_set

EMBEDDINGS = ("fixed", "classifier")
MEMORIZATION_FOLDER = marked_folder("memorization folder", "memorization.json")


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared Euclidean distance to the nearest reference row, per query row (float64, exact
    enough that an identical row gives 0 up to rounding of the norms)."""
    refs = torch.from_numpy(np.asarray(references, np.float64))
    ref_norms = (refs * refs).sum(1)
    indices, distances = [], []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(np.asarray(queries[start : start + chunk], np.float64))
        squared = (q * q).sum(1, keepdim=True) + ref_norms[None, :] - 2.0 * q @ refs.T
        best = squared.argmin(1)
        # recompute the winner's distance directly: the expanded form loses precision near 0
        exact = ((q - refs[best]) ** 2).sum(1)
        indices.append(best.numpy())
        distances.append(exact.numpy())
    return np.concatenate(indices), np.concatenate(distances)


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def fixed_embedding(images: np.ndarray) -> np.ndarray:
    """16px thumbnails, each channel standardised per image, L2-normalised: (N, 768)."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    thumbs = torch.nn.functional.interpolate(tensor, size=(16, 16), mode="area")
    thumbs = thumbs - thumbs.mean((2, 3), keepdim=True)
    thumbs = thumbs / thumbs.std((2, 3), keepdim=True).clamp_min(1e-6)
    flat = thumbs.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def dihedral(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter turns of (N, S, S, 3) images."""
    views = []
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, k, axes=(1, 2))))
    return views


def nearest_by_embedding(generated: np.ndarray, real: np.ndarray, embed) -> tuple[np.ndarray, np.ndarray]:
    """Nearest real image by cosine distance, minimised over the dihedral views of each generated image."""
    real_embedding = embed(real)
    real_embedding = real_embedding / np.linalg.norm(real_embedding, axis=1, keepdims=True).clip(1e-12)
    best_index = np.zeros(len(generated), dtype=np.int64)
    best_distance = np.full(len(generated), np.inf)
    for view in dihedral(generated):
        view_embedding = embed(view)
        view_embedding = view_embedding / np.linalg.norm(view_embedding, axis=1, keepdims=True).clip(1e-12)
        index, squared = nearest(view_embedding, real_embedding)
        cosine_distance = squared / 2.0  # for unit vectors |a - b|^2 = 2 (1 - cos)
        better = cosine_distance < best_distance
        best_index[better], best_distance[better] = index[better], cosine_distance[better]
    return best_index, best_distance


def check_memorization(generated, real, *, out=None, threshold: float = 0.02, feature_threshold: float | None = None,
                       size: int = 32, embedding: str = "fixed", pairs: int = 16, overwrite: bool = False,
                       options: ScoreOptions = ScoreOptions()) -> dict:
    """Nearest real neighbours of every generated image; writes memorization.csv and closest_pairs.png to `out`."""
    real_labels, columns, device, budget = options.real_labels, options.columns, options.device, options.budget
    epochs, seed, strict, workers = options.epochs, options.seed, options.strict, options.workers
    if embedding not in EMBEDDINGS:
        raise UsageError(f"{{embedding}} must be fixed or classifier, not {embedding!r}")
    # the folder is written whole at the end; --overwrite replaces an earlier one only then
    claim = None if out is None else claim_output(out, kind=MEMORIZATION_FOLDER, inputs=(generated, real, real_labels),
                                                  overwrite=overwrite)
    generated_set = open_set(generated, labelled=False, strict=strict)
    real_set = open_set(real, real_labels, labelled=embedding == "classifier", strict=strict, **(columns or {}))
    generated_images, generated_samples, _ = load_images(generated_set.dataset, size, strict=strict, workers=workers)
    real_images, real_samples, _ = load_images(real_set.dataset, size, strict=strict, workers=workers)
    if len(generated_images) == 0 or len(real_images) == 0:
        raise SkinaugError("memorization needs at least one readable generated and one real image")
    log(f"comparing {len(generated_images)} generated images with {len(real_images)} real images at {size}px")

    pixel_index, pixel_squared = nearest(pixel_vectors(generated_images), pixel_vectors(real_images))
    pixel_distance = np.sqrt(pixel_squared / (size * size * 3))  # RMS over pixels and channels
    if embedding == "fixed":
        feature_index, feature_distance = nearest_by_embedding(generated_images, real_images, fixed_embedding)
    else:
        feature_index, feature_distance = _classifier_neighbours(generated_images, real_images, real_samples,
                                                                 real_set.dataset.class_names, size, device, budget, epochs, seed)
    flagged = pixel_distance <= threshold
    if feature_threshold is not None:
        flagged |= feature_distance <= feature_threshold

    sources = generated_set.sources or {}
    rows = []
    for i, sample in enumerate(generated_samples):
        nearest_name = real_samples[pixel_index[i]].name
        rows.append({
            "image": sample.name, "nearest_pixel": nearest_name, "pixel_distance": float(pixel_distance[i]),
            "nearest_feature": real_samples[feature_index[i]].name, "feature_distance": float(feature_distance[i]),
            "nearest_is_source": nearest_name in sources.get(sample.name, ()), "flagged": bool(flagged[i]),
        })
    order = np.argsort(pixel_distance, kind="stable")
    summary = {
        "generated": str(generated), "real": str(real), "generated_images": len(rows), "real_images": int(len(real_images)),
        "size": size, "threshold": threshold, "feature_threshold": feature_threshold, "embedding": embedding,
        "flagged": int(flagged.sum()),
        "pixel_distance": {"min": float(pixel_distance.min()), "median": float(np.median(pixel_distance))},
        "feature_distance": {"min": float(feature_distance.min()), "median": float(np.median(feature_distance))},
        "nearest_is_source": int(sum(r["nearest_is_source"] for r in rows)),
        "closest": [{k: rows[i][k] for k in ("image", "nearest_pixel", "pixel_distance")} for i in order[:5]],
    }
    if claim is not None:
        with claim:
            write_text(claim.work / "memorization.csv", _csv([rows[i] for i in order]))
            generated_by_name = {s.name: s for s in generated_samples}
            real_by_name = {s.name: s for s in real_samples}
            closest = [(generated_by_name[rows[i]["image"]], real_by_name[rows[i]["nearest_pixel"]], rows[i]["pixel_distance"])
                       for i in order[:pairs]]
            draw_pairs(closest, claim.work / "closest_pairs.png")
            write_json(claim.work / "memorization.json", summary)
        summary["out"] = str(out)
    return summary


def _classifier_neighbours(generated_images, real_images, real_samples, class_names, size, device, budget, epochs, seed):
    from .fid import classifier_feature_pair

    device = resolve_device(device)
    generated_features, real_features = classifier_feature_pair(real_images, real_samples, class_names, generated_images,
                                                                size, device, budget, epochs, seed)
    generated_features /= np.linalg.norm(generated_features, axis=1, keepdims=True).clip(1e-12)
    real_features /= np.linalg.norm(real_features, axis=1, keepdims=True).clip(1e-12)
    index, squared = nearest(generated_features, real_features)
    return index, squared / 2.0


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def draw_pairs(pairs, path, tile: int = 96, per_row: int = 4) -> None:
    """Generated | nearest real, side by side, closest first, each pair captioned with its pixel distance."""
    from PIL import Image, ImageDraw

    from ..data.scan import load_image

    rows = max(1, (len(pairs) + per_row - 1) // per_row)
    pair_width, caption = 2 * tile + 12, 28
    canvas = Image.new("RGB", (per_row * pair_width, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (generated_sample, real_sample, distance) in enumerate(pairs):
        x, y = (n % per_row) * pair_width, (n // per_row) * (tile + caption)
        canvas.paste(Image.fromarray(load_image(generated_sample.path, tile)), (x, y))
        canvas.paste(Image.fromarray(load_image(real_sample.path, tile)), (x + tile, y))
        draw.text((x + 2, y + tile + 2), f"{generated_sample.name[:14]} | {real_sample.name[:14]}", fill="black")
        draw.text((x + 2, y + tile + 14), f"pixel RMS {distance:.4f}", fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
