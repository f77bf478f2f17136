"""What the scores that read a real set share (FID and memorization): how that set is read, and where and how a
feature classifier trains on it. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreOptions:
    """real_labels: the real set's labels CSV (a classifier embedding needs labels); columns: its image/label/group
    columns (`image_col`, `label_col`, `group_col`). device, seed and budget (a `scores.classifier.Budget`, None: the
    default) with epochs (passes over the real images) size the feature classifier. strict refuses unreadable
    images and degenerate scores; workers: decoding threads (None: the default)."""

    real_labels: object = None
    columns: dict | None = None
    device: object = "auto"
    budget: object = None
    epochs: int = 3
    seed: int = 0
    strict: bool = False
    workers: int | None = None
