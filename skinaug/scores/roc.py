"""ROC curves and AUC, computed here (no scikit-learn), and a ROC plot drawn with PIL (no matplotlib)."""

from __future__ import annotations

import numpy as np

from ..errors import SkinaugError


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start of each run of equal values, and its length
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    lengths = np.diff(np.r_[starts, len(values)])
    mean_rank = starts + (lengths + 1) / 2.0  # ranks starts+1 .. starts+length
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(is_positive, scores) -> float:
    """Area under the ROC curve: the probability that a positive outscores a negative, ties counting half
    (the Mann-Whitney U statistic over n_pos * n_neg)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise SkinaugError(f"AUC needs positive and negative test images (got {n_pos} positive, {n_neg} negative)")
    ranks = average_ranks(scores)
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auc(labels, probabilities) -> float:
    """Mean one-vs-rest AUC over the classes present in `labels` (probabilities: (N, C))."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    aucs = [roc_auc(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])
            if 0 < (labels == c).sum() < len(labels)]
    if not aucs:
        raise SkinaugError("AUC needs test images of at least two classes")
    return float(np.mean(aucs))


def roc_curve(is_positive, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    scores_sorted = np.asarray(scores, dtype=np.float64)[order]
    hits = is_positive[order]
    last_of_run = np.r_[scores_sorted[1:] != scores_sorted[:-1], True]  # one point per distinct score
    tp = np.cumsum(hits)[last_of_run]
    fp = np.cumsum(~hits)[last_of_run]
    tpr = np.r_[0.0, tp / max(1, hits.sum())]
    fpr = np.r_[0.0, fp / max(1, (~hits).sum())]
    return fpr, tpr


def macro_roc_curve(labels, probabilities, grid: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The macro-average one-vs-rest ROC curve: each class's TPR interpolated on a common FPR grid, averaged."""
    fpr_grid = np.linspace(0.0, 1.0, grid)
    curves = []
    for c in range(probabilities.shape[1]):
        if 0 < (labels == c).sum() < len(labels):
            fpr, tpr = roc_curve(labels == c, probabilities[:, c])
            curves.append(np.interp(fpr_grid, fpr, tpr))
    return fpr_grid, np.mean(curves, axis=0)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_roc_png(curves: list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], path, title: str = "ROC") -> None:
    """One colour per set; every seed's curve is drawn. `curves`: [(legend, [(fpr, tpr), ...]), ...]."""
    from PIL import Image, ImageDraw

    from ..storage.fs import atomic_path

    size, margin = 480, 56
    image = Image.new("RGB", (size + margin + 16, size + margin + 52), "white")
    draw = ImageDraw.Draw(image)
    left, top = margin, 44

    def xy(fpr, tpr):
        return [(left + float(f) * size, top + (1.0 - float(t)) * size) for f, t in zip(fpr, tpr)]

    draw.text((left, 6), title, fill="black")
    for tick in np.linspace(0, 1, 6):
        x, y = left + tick * size, top + (1 - tick) * size
        draw.line([(x, top), (x, top + size)], fill=(235, 235, 235))
        draw.line([(left, y), (left + size, y)], fill=(235, 235, 235))
        draw.text((x - 8, top + size + 4), f"{tick:.1f}", fill="black")
        draw.text((left - 28, y - 6), f"{tick:.1f}", fill="black")
    draw.rectangle([left, top, left + size, top + size], outline="black")
    draw.line(xy([0, 1], [0, 1]), fill=(160, 160, 160))
    draw.text((left + size / 2 - 60, top + size + 20), "false positive rate", fill="black")
    draw.text((4, top - 16), "true positive rate", fill="black")
    for i, (legend, seed_curves) in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        for fpr, tpr in seed_curves:
            draw.line(xy(fpr, tpr), fill=colour, width=2)
        y = top + size - 16 * (len(curves) - i) - 4
        draw.rectangle([left + size - 230, y + 3, left + size - 218, y + 11], fill=colour)
        draw.text((left + size - 212, y), legend, fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
