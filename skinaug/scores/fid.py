"""Fréchet distance and KID between generated and real images, and k-NN precision and recall (Kynkäänniemi et al. 2019).

Features come from the FID Inception network (the usual FID, needing its local weights file) or from a
classifier trained on the real images' labels (`features="classifier"`): a lesion-aware space that needs no
download. Both sets are decoded at the same square size first (default: the generated images' side), so the
score compares content rather than resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.scan import load_images
from ..errors import SkinaugError, UsageError
from ..runtime import log, resolve_device, warn
from .options import ScoreOptions
from .sets import open_set

FEATURES = ("inception", "classifier")

# Directions along which features spread less than this share of their typical norm do not count towards their rank
RANK_TOLERANCE = 1e-3


def feature_rank(features: np.ndarray, tolerance: float = RANK_TOLERANCE) -> int:
    """The number of directions the images' features spread along: the centred features' singular values above
    `tolerance` times the features' root-mean-square norm (0: every image has the same features)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return 0
    scale = float(np.sqrt((features**2).sum(axis=1).mean()))
    centred = features - features.mean(axis=0)
    # the nonzero eigenvalues of the smaller Gram matrix: d x d or n x n, whichever is smaller
    gram = centred.T @ centred if centred.shape[1] <= centred.shape[0] else centred @ centred.T
    spread = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None) / len(features))
    return int((spread > tolerance * max(scale, 1e-300)).sum())


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as pytorch-fid) of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise SkinaugError(f"a Fréchet distance needs at least 2 images per set, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).

    tr((S1 S2)^1/2) equals the sum of the singular values of S1^1/2 S2^1/2 (the eigenvalues of
    S1^1/2 S2 S1^1/2 are their squares): symmetric square roots and an SVD, stabler than a general matrix
    square root, and exact to rounding for S1 = S2 even when the covariances are singular (fewer images
    than feature dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    trace_sqrt = np.linalg.svd(_sqrt_psd(sigma1) @ _sqrt_psd(sigma2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt))


def kernel_distance(generated: np.ndarray, real: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float, int]:
    """KID (Bińkowski et al. 2018): the unbiased MMD^2 between the two feature sets under the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `subset_size` of each set (without
    replacement within a subset; smaller sets use their size). Returns (mean, std over subsets, subset size).
    Unlike the Fréchet distance it is unbiased, so sets of a few hundred images compare fairly."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    size = min(subset_size, len(generated), len(real))
    if size < 2:
        raise SkinaugError(f"KID needs at least 2 images per set, got {len(generated)} and {len(real)}")
    dim = generated.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = generated[rng.choice(len(generated), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / dim + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1))
        values.append(off_diagonal - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, size


def standardiser(*sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of the given sets together: a classifier's features are z-scored with them before KID.

    KID's cubic kernel (x.y / d + 1)^3 suits Inception's small non-negative pooled features. A trained classifier's
    features have a few channels many times larger than the rest: x.y / d is then ruled by those channels, cubed,
    and the estimate is noise (negative KIDs with spreads of thousands). Z-scored, every channel weighs alike and
    the KID no longer depends on the network's feature magnitudes. The statistics pool both sets, so a channel
    that is nearly constant in one set but not in the other cannot blow up; a constant channel keeps a std of 1."""
    pooled = np.concatenate([np.asarray(features, np.float64) for features in sets])
    std = pooled.std(axis=0)
    return pooled.mean(axis=0), np.where(std > 0, std, 1.0)


def _pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64, chunked over a."""
    tb = torch.from_numpy(np.asarray(b, np.float64))
    out = [torch.cdist(torch.from_numpy(np.asarray(a[i : i + chunk], np.float64)), tb).numpy() for i in range(0, len(a), chunk)]
    return np.concatenate(out) if out else np.zeros((0, len(b)))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise SkinaugError(f"k-NN precision/recall with k={k} needs more than {k} images per set, got {len(features)}")
    distances = _pairwise_distances(features, features)
    return np.partition(distances, k, axis=1)[:, k]  # column 0 after partition is the point itself (distance 0)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of generated samples inside the real manifold (the union of k-NN balls around real
    samples); recall: share of real samples inside the generated manifold."""
    real_radii, generated_radii = knn_radii(real, k), knn_radii(generated, k)
    distances = _pairwise_distances(generated, real)  # (G, R)
    precision = float((distances <= real_radii[None, :]).any(axis=1).mean())
    recall = float((distances <= generated_radii[:, None]).any(axis=0).mean())
    return precision, recall


@torch.no_grad()
def inception_features(model, images: np.ndarray, device, batch_size: int = 64) -> np.ndarray:
    """(N, 2048) pool features of uint8 (N, S, S, 3) images."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        outputs.append(model(batch).double().cpu().numpy())
    return np.concatenate(outputs)


def _first_image_side(samples) -> int | None:
    from PIL import Image

    for sample in samples[:1]:
        with Image.open(sample.path) as image:
            return min(image.size)
    return None


def set_parts(spec) -> list[Path]:
    """A generated set: one folder, or several joined by '+' (scored as one set). A path that exists is taken whole,
    '+' in its name included."""
    path = Path(spec)
    if path.expanduser().exists() or "+" not in str(spec):
        return [path]
    parts = str(spec).split("+")
    if not all(parts):
        raise UsageError(f"{{generated}} {spec} has an empty part: join folders as A+B")
    return [Path(part) for part in parts]


def compute_fid(generated, real, *, features: str = "inception", inception_weights=None, image_size: int | None = None,
                k: int = 3, batch_size: int = 64, options: ScoreOptions = ScoreOptions()) -> dict:
    """FID (or the classifier-feature Fréchet distance) of `generated` against `real`, with precision/recall.
    options: the real set's labels and columns, the device, the feature classifier's budget, strict, workers."""
    real_labels, columns, device, budget = options.real_labels, options.columns, options.device, options.budget
    epochs, seed, strict, workers = options.epochs, options.seed, options.strict, options.workers
    if features not in FEATURES:
        raise UsageError(f"{{features}} must be inception or classifier, not {features!r}")
    device = resolve_device(device)
    generated_sets = [open_set(part, labelled=False, strict=strict) for part in set_parts(generated)]
    real_set = open_set(real, real_labels, labelled=features == "classifier", strict=strict, **(columns or {}))
    if features == "inception":
        from .inception import load_fid_inception

        model = load_fid_inception(inception_weights, device)  # fails before any image is decoded
    size = image_size or _first_image_side(generated_sets[0].dataset.samples) or 299
    loaded = [load_images(part.dataset, size, strict=strict, workers=workers) for part in generated_sets]
    generated_images = np.concatenate([images for images, _, _ in loaded])
    skipped_generated = [name for _, _, skipped in loaded for name in skipped]
    real_images, real_kept, skipped_real = load_images(real_set.dataset, size, strict=strict, workers=workers)
    log(f"{len(generated_images)} generated and {len(real_images)} real images at {size}px "
        f"({len(skipped_generated) + len(skipped_real)} unreadable, skipped)")
    if features == "inception":
        generated_features = inception_features(model, generated_images, device, batch_size)
        real_features = inception_features(model, real_images, device, batch_size)
    else:
        generated_features, real_features = classifier_feature_pair(real_images, real_kept, real_set.dataset.class_names,
                                                                    generated_images, size, device, budget, epochs, seed)
    rank, degenerate = degenerate_features(generated_features, real_features, features, strict)
    mu_g, sigma_g = feature_statistics(generated_features)
    mu_r, sigma_r = feature_statistics(real_features)
    precision, recall = precision_recall(real_features, generated_features, k)
    distance = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
    if features == "inception":
        kid_mean, kid_std, kid_subset = kernel_distance(generated_features, real_features, seed=seed)
    else:
        mean, std = standardiser(generated_features, real_features)
        kid_mean, kid_std, kid_subset = kernel_distance((generated_features - mean) / std, (real_features - mean) / std,
                                                        seed=seed)
    result = {
        "generated": str(generated), "real": str(real), "features": features, "feature_dim": int(generated_features.shape[1]),
        "image_size": size, "generated_images": int(len(generated_images)), "real_images": int(len(real_images)),
        "frechet_distance": distance, "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": kid_subset,
        "precision": precision, "recall": recall, "k": k, "feature_rank": rank, "degenerate": degenerate,
    }
    if features == "inception":
        result["fid"] = distance  # the standard FID: only Inception features make one
    else:
        result["note"] = ("Fréchet distance and KID in the features of a classifier trained on these real images: not an "
                          "FID, not comparable with Inception FIDs, nor across real sets, seeds or budgets; the KID's "
                          "features are z-scored with both sets' mean and std per feature")
    return result


def degenerate_features(generated_features, real_features, features: str, strict: bool) -> tuple[int, str | None]:
    """The features' rank over both sets, and what to say when it is 0: every image embedded alike (an untrained
    classifier), so the distance (0), KID, precision (1) and recall measure nothing. Refused under `strict`."""
    rank = feature_rank(np.concatenate([generated_features, real_features]))
    if rank > 0:
        return rank, None
    advice = "train the feature classifier longer ({epochs})" if features == "classifier" else "check the Inception weights"
    message = (f"degenerate {features} features: all {len(generated_features) + len(real_features)} images have the "
               f"same features (rank 0), so the distance, KID, precision and recall measure nothing; {advice}")
    if strict:
        raise SkinaugError(f"{message} ({{strict=True}} refuses such a score)")
    warn(message)
    return rank, message


def classifier_feature_pair(real_images, real_samples, class_names, generated_images, size, device, budget, epochs, seed):
    """Trains a classifier on the labelled real images, then embeds both sets with its pooled features."""
    from .classifier import Budget, features, steps_for, train_classifier

    labels = np.array([s.label for s in real_samples], dtype=np.int64)
    labelled = labels >= 0
    if len(set(labels[labelled].tolist())) < 2:
        raise SkinaugError("classifier features need real images of at least two classes: give {real_labels=CSV}, "
                           "class sub-folders, or a labelled OUT_DIR as REAL_DIR")
    budget = budget or Budget()
    budget.image_size = size
    budget.steps = steps_for(epochs, int(labelled.sum()), budget.batch_size)
    log(f"training {budget.arch} on {int(labelled.sum())} real images ({len(class_names)} classes, {budget.steps} steps) for its features")
    model = train_classifier(real_images[labelled], labels[labelled], len(class_names), budget, seed=seed, device=device,
                             desc="feature classifier")
    return features(model, generated_images, device), features(model, real_images, device)
