"""Iterative inpainting in code space: `skinaug resample --iterative STEPS --box-size B`.

Seed report 003 turns one image into a new one with GLIDE by masking a small box and inpainting it, 9 to 12 times.
Boxes too large lose the context that keeps the image's content; boxes too small change nothing but add blur; masking
the same pixels again and again blurs them ("xerox effect"). Here the class-conditional prior does the inpainting:

- Each step re-draws the codes of one square box per image, given the rest, with the masked-resampling machinery of
  `resample --mask-dir` (the raster draw with the codes outside the box kept, then `--refine N` Gibbs sweeps that
  re-draw each box code given all of its neighbours, `priors/refine.py`). The codes are decoded once, at the end.
- Box sizes are in bottom-grid cells (a 64px model's bottom grid is 16x16: a box of 4 is 16x16 pixels). The size per
  step is `--box-size` (`constant`), shrinks from it to half of it over the steps (`shrink`: coarse changes first,
  then details), or is listed, one size per step (`--box-schedule 8,8,6,6,4`).
- Placement limits repeated masking: each step takes, of all positions where the box fits, one whose cells have been
  re-drawn the fewest times in all (the least sum of the per-cell counts so far); ties, the first step's included,
  are broken by a generator seeded from the batch seed and the image's place in its batch. Placement does not
  depend on the drawn codes, so the boxes follow from the plan and the seed alone.
- `--iterative-levels both` first re-draws the top codes under the box (the top cells that overlap it, given the
  other top codes), then the bottom box given the new top codes: larger changes of shape and colour.
- Every image's boxes are recorded (labels rows carry them to the --jsonl lines and to OUT_DIR/boxes.jsonl), so a
  user sees which cells each step re-drew; nothing outside them changes.

Cost per image and step: one raster draw of the grid (the fast sampler runs every position; kept codes are only
read in), so STEPS steps cost about STEPS plain resamples; --refine N adds N x (box cells) teacher-forced forwards of
`--refine-candidates` grids each, two orders of magnitude more on a CPU with the shipped model's 16 cells and 32
candidates (`benchmarks/iterative_resample.py` measures both): refine on a GPU, or with fewer candidates.

`--mask-dir` is refused with --iterative: the boxes are the region that is re-drawn. The onnx backend is refused too
(the steps and the refinement drive the PyTorch priors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..runtime import resolve_backend

SCHEDULES = ("constant", "shrink")
LEVELS = ("bottom", "both")
PLACEMENT = "least-masked"  # run.json's name for the placement rule above
WITH_MASK = "{iterative} re-draws boxes of its own choosing and {mask_dir} re-draws a lesion mask: choose one"


@dataclass(frozen=True)
class IterativeRequest:
    """What the command line asks for, before the model's grid is known."""

    steps: int
    box_size: int | None = None  # None: a quarter of the bottom grid's shorter side
    schedule: str | None = None  # None: constant
    levels: str = "bottom"


@dataclass(frozen=True)
class IterativeSettings:
    """A request resolved against a model: one box size per step, checked to fit the bottom grid."""

    steps: int
    box_sizes: tuple[int, ...]
    schedule: str
    levels: str
    grid: tuple[int, int]  # the bottom grid, where boxes are placed
    top_grid: tuple[int, int] | None

    @property
    def redrawn_levels(self) -> tuple[str, ...]:
        """In the order each step re-draws them: the bottom box is drawn given the new top codes."""
        return ("top", "bottom") if self.levels == "both" else ("bottom",)

    def to_json(self) -> dict:
        """run.json's "iterative" and the plan's (so that --resume refuses other settings)."""
        return {"steps": self.steps, "box_sizes": list(self.box_sizes), "box_schedule": self.schedule,
                "levels": self.levels, "box_unit": "bottom-grid cells", "bottom_grid": list(self.grid),
                "placement": PLACEMENT}


def iterative_request(steps, box_size=None, schedule=None, levels=None, *, method="resample", mask_dir=None,
                      backend=None) -> IterativeRequest | None:
    """The command line's iterative options checked for what they go with; None without --iterative."""
    if steps is None:
        if box_size is not None or schedule is not None or levels is not None:
            raise UsageError("{box_size}, {box_schedule} and {iterative_levels} go with {iterative=STEPS}")
        return None
    if steps < 1:
        raise UsageError(f"{{iterative}} must be at least 1 step, not {steps}")
    if method != "resample":
        raise UsageError(f"{{iterative}} goes with {{method='resample'}}, not {method}")
    if mask_dir is not None:
        raise UsageError(WITH_MASK)
    if resolve_backend(backend) == "onnx":
        raise UsageError("{iterative} drives the PyTorch priors step by step: it does not apply to {backend='onnx'}")
    if levels is not None and levels not in LEVELS:
        raise UsageError(f"{{iterative_levels}} must be bottom or both, not {levels}")
    return IterativeRequest(steps, box_size, schedule, levels or "bottom")


def resolve_settings(request: IterativeRequest, grids: dict) -> IterativeSettings:
    """Box sizes per step for a model's config; a size that cannot fit its bottom grid is a usage error."""
    grid = tuple(grids["bottom"])  # the model's code grid per level (ModelSpec.grid)
    top_grid = tuple(grids["top"]) if "top" in grids else None
    if request.levels == "both" and top_grid is None:
        raise UsageError("{iterative_levels='both'} re-draws top codes too: this model has one level")
    side = min(grid)
    default = max(1, side // 4)
    schedule = request.schedule or "constant"
    if schedule in SCHEDULES:
        size = default if request.box_size is None else request.box_size
        check_box_size(size, grid, "{box_size}")
        sizes = schedule_sizes(schedule, size, request.steps)
    else:
        if request.box_size is not None:
            raise UsageError("give {box_size} or a list of sizes in {box_schedule}, not both")
        sizes = parse_sizes(schedule, request.steps)
        for size in sizes:
            check_box_size(size, grid, "{box_schedule}")
    return IterativeSettings(request.steps, sizes, schedule, request.levels, grid, top_grid)


def check_box_size(size: int, grid: tuple[int, int], flag: str) -> None:
    if not 1 <= size <= min(grid):
        raise UsageError(f"{flag}: a box of {size} does not fit the {grid[0]}x{grid[1]} bottom grid: "
                         f"give 1 to {min(grid)} (box sizes are in bottom-grid cells)")


def schedule_sizes(schedule: str, size: int, steps: int) -> tuple[int, ...]:
    """constant: `size` at every step; shrink: from `size` down to half of it (rounded up), evenly over the steps."""
    if schedule == "constant" or steps == 1:
        return (size,) * steps
    smallest = -(-size // 2)
    return tuple(int(round(size - (size - smallest) * step / (steps - 1))) for step in range(steps))


def parse_sizes(text: str, steps: int) -> tuple[int, ...]:
    """'8,8,6,6,4' -> (8, 8, 6, 6, 4): one size per step."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise UsageError(f"{{box_schedule}} must be {' or '.join(SCHEDULES)}, or one box size per step like 8,8,6,6,4; "
                         f"not {text!r}")
    if len(parts) != steps:
        raise UsageError(f"{{box_schedule}} lists {len(parts)} sizes for {{iterative}} {steps}: give one size per step")
    return tuple(int(part) for part in parts)


# ------------------------------------------------------------------------- placing the boxes


def window_sums(counts: np.ndarray, size: int) -> np.ndarray:
    """(H - size + 1, W - size + 1): the sum of `counts` over the size x size box at each top-left position."""
    padded = np.pad(counts, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    return padded[size:, size:] - padded[:-size, size:] - padded[size:, :-size] + padded[:-size, :-size]


def place_boxes(grid: tuple[int, int], sizes, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """(row, column, height, width) per step: a position whose cells were re-drawn the fewest times so far, in all;
    ties broken by `rng`."""
    counts = np.zeros(grid, np.int64)
    boxes = []
    for size in sizes:
        sums = window_sums(counts, size)
        row, column = divmod(int(rng.choice(np.flatnonzero(sums == sums.min()))), sums.shape[1])
        counts[row : row + size, column : column + size] += 1
        boxes.append((row, column, size, size))
    return boxes


def covering_box(box, grid: tuple[int, int], other: tuple[int, int]) -> tuple[int, int, int, int]:
    """The smallest box of the `other` grid whose cells overlap `box` of `grid` (the top cells over a bottom box)."""
    row, column, height, width = box
    top, left = row * other[0] // grid[0], column * other[1] // grid[1]
    bottom, right = -(-(row + height) * other[0] // grid[0]), -(-(column + width) * other[1] // grid[1])
    return top, left, bottom - top, right - left


def image_boxes(settings: IterativeSettings, seed: int, index: int) -> list[dict]:
    """The boxes one image's steps re-draw, in drawing order: what its row records. `index`: its place in the batch."""
    records = []
    rng = np.random.default_rng([seed, index])
    for step, box in enumerate(place_boxes(settings.grid, settings.box_sizes, rng)):
        if settings.levels == "both":
            records.append(box_record(step, "top", covering_box(box, settings.grid, settings.top_grid)))
        records.append(box_record(step, "bottom", box))
    return records


def box_record(step: int, level: str, box) -> dict:
    row, column, height, width = (int(value) for value in box)
    return {"step": step, "level": level, "row": row, "column": column, "height": height, "width": width}


def boxes_mask(records: list[dict], level: str, grid: tuple[int, int], step: int | None = None) -> np.ndarray:
    """(H, W) bool: the cells of `level` that the records re-draw (at `step`, or at any step)."""
    mask = np.zeros(grid, bool)
    for box in records:
        if box["level"] == level and step in (None, box["step"]):
            mask[box["row"] : box["row"] + box["height"], box["column"] : box["column"] + box["width"]] = True
    return mask


# ------------------------------------------------------------------------- drawing
