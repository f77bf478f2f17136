"""resample --iterative: iterative inpainting in code space, one box of codes re-drawn per step."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.errors import UsageError
from skinaug.generation.iterative import (IterativeRequest, boxes_mask, covering_box, image_boxes, parse_sizes, place_boxes,
                               resolve_settings, schedule_sizes, window_sums)
from skinaug.storage.writer import LABEL_COLUMNS

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores

GRID = (8, 8)  # the tiny model's bottom grid (its top grid is 4x4)
TWO_LEVEL = {"top": [4, 4], "bottom": [8, 8]}  # code grids per level


# ------------------------------------------------------------------------- sizes and placement


def test_window_sums_are_the_box_sums_at_every_position():
    counts = np.random.default_rng(0).integers(0, 5, (6, 7))
    sums = window_sums(counts, 3)
    assert sums.shape == (4, 5)
    for row in range(4):
        for column in range(5):
            assert sums[row, column] == counts[row : row + 3, column : column + 3].sum()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("grid, sizes", [((8, 8), [3] * 9), ((6, 9), [4, 4, 3, 3, 2, 2, 2]), ((5, 5), [5, 1, 2])])
def test_each_box_goes_where_cells_were_redrawn_least_so_far(seed, grid, sizes):
    boxes = place_boxes(grid, sizes, np.random.default_rng(seed))
    counts = np.zeros(grid, int)
    for (row, column, height, width), size in zip(boxes, sizes):
        assert height == width == size and 0 <= row <= grid[0] - size and 0 <= column <= grid[1] - size
        least = min(counts[r : r + size, c : c + size].sum()
                    for r in range(grid[0] - size + 1) for c in range(grid[1] - size + 1))
        assert counts[row : row + size, column : column + size].sum() == least
        counts[row : row + size, column : column + size] += 1


def repeats(boxes, grid):
    """Re-draws of cells that had been re-drawn before: what blurs."""
    counts = np.zeros(grid, int)
    for row, column, height, width in boxes:
        counts[row : row + height, column : column + width] += 1
    return int(np.maximum(counts - 1, 0).sum())


def test_least_masked_placement_repeats_far_less_than_random_placement():
    grid, size, steps = (16, 16), 4, 10  # the shipped 64px model's bottom grid, GLIDE's number of steps
    placed, scattered = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        placed.append(repeats(place_boxes(grid, [size] * steps, rng), grid))
        corners = rng.integers(0, grid[0] - size + 1, (steps, 2))
        scattered.append(repeats([(r, c, size, size) for r, c in corners], grid))
    # ten 4x4 boxes fit side by side in 16x16 unless the first ones leave awkward gaps: few repeats, ever
    assert max(placed) <= 16 and sum(placed) * 4 < sum(scattered)


def test_ties_are_broken_by_the_seed():
    first = {tuple(place_boxes(GRID, [3], np.random.default_rng(seed))[0]) for seed in range(12)}
    assert len(first) >= 5
    same = [place_boxes(GRID, [3, 2, 2], np.random.default_rng(4)) for _ in range(2)]
    assert same[0] == same[1]


def test_the_top_box_is_the_top_cells_over_the_bottom_box():
    assert covering_box((1, 2, 3, 3), (8, 8), (4, 4)) == (0, 1, 2, 2)  # rows 1..3 -> top rows 0..1; cols 2..4 -> 1..2
    assert covering_box((2, 4, 2, 4), (8, 8), (4, 4)) == (1, 2, 1, 2)  # aligned: exactly half
    assert covering_box((0, 0, 8, 8), (8, 8), (4, 4)) == (0, 0, 4, 4)


def test_image_boxes_record_every_step_in_drawing_order():
    settings = resolve_settings(IterativeRequest(3, 3, levels="both"), TWO_LEVEL)
    records = image_boxes(settings, seed=11, index=2)
    assert [(r["step"], r["level"]) for r in records] == [(0, "top"), (0, "bottom"), (1, "top"), (1, "bottom"),
                                                          (2, "top"), (2, "bottom")]
    bottoms = place_boxes(GRID, [3, 3, 3], np.random.default_rng([11, 2]))
    for step, box in enumerate(bottoms):
        bottom, top = records[2 * step + 1], records[2 * step]
        assert (bottom["row"], bottom["column"], bottom["height"], bottom["width"]) == box
        assert (top["row"], top["column"], top["height"], top["width"]) == covering_box(box, GRID, (4, 4))
    assert image_boxes(settings, 11, 2) == records and image_boxes(settings, 11, 3) != records
    mask = boxes_mask(records, "bottom", GRID, step=1)
    row, column, size, _ = bottoms[1]
    assert mask.sum() == 9 and mask[row : row + 3, column : column + 3].all()


def test_box_schedules():
    assert schedule_sizes("constant", 4, 3) == (4, 4, 4)
    assert schedule_sizes("shrink", 8, 5) == (8, 7, 6, 5, 4)
    assert schedule_sizes("shrink", 5, 3) == (5, 4, 3)
    assert schedule_sizes("shrink", 6, 1) == (6,)
    assert parse_sizes("8, 8,6,6,4", 5) == (8, 8, 6, 6, 4)
    assert resolve_settings(IterativeRequest(2), {"bottom": [16, 16]}).box_sizes == (4, 4)  # a quarter
    assert resolve_settings(IterativeRequest(3, schedule="4,2,1"), TWO_LEVEL).box_sizes == (4, 2, 1)
    assert resolve_settings(IterativeRequest(4, 6, "shrink"), TWO_LEVEL).box_sizes == (6, 5, 4, 3)


@pytest.mark.parametrize("request_, message", [
    (IterativeRequest(2, 9), "a box of 9 does not fit the 8x8 bottom grid: give 1 to 8"),
    (IterativeRequest(2, 0), "a box of 0 does not fit"),
    (IterativeRequest(3, schedule="4,4"), "lists 2 sizes for iterative 3"),
    (IterativeRequest(2, schedule="4,x"), "one box size per step"),
    (IterativeRequest(2, schedule="grow"), "constant or shrink"),
    (IterativeRequest(2, schedule="4,9"), "a box of 9 does not fit"),
    (IterativeRequest(2, 4, schedule="4,4"), "not both"),
])
def test_impossible_boxes_are_usage_errors(request_, message):
    with pytest.raises(UsageError, match=message):
        resolve_settings(request_, TWO_LEVEL)


def test_both_levels_need_a_top_level():
    with pytest.raises(UsageError, match="one level"):
        resolve_settings(IterativeRequest(2, levels="both"), {"bottom": [8, 8]})


# ------------------------------------------------------------------------- the command


def resample(generator_model, out, *options):
    return main([str(a) for a in ["resample", "--codes", generator_model["codes"], "--model", generator_model["model"],
                                  "--out", out, "--device", "cpu", "--quiet", *options]])


def read_boxes(out) -> dict:
    lines = (out / "boxes.jsonl").read_text().splitlines()
    return {entry["image"]: entry["boxes"] for entry in map(json.loads, lines)}


def read_rows(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def source_codes_of(generator_model, out):
    """(the output's codes, the source codes of each output image, the output's boxes per image)."""
    source, made = read_codes(generator_model["codes"]), read_codes(out / "codes.h5")
    index = {name: i for i, name in enumerate(source.images)}
    rows = read_rows(out)
    assert [row["image"] for row in rows] == made.images
    picks = [index[row["source_top"]] for row in rows]
    return made, {level: values[picks] for level, values in source.codes.items()}, read_boxes(out)


@pytest.mark.parametrize("levels, refine", [("bottom", 0), ("bottom", 1), ("both", 0)])
def test_codes_change_only_inside_the_recorded_boxes(generator_model, tmp_path, levels, refine):
    out = tmp_path / "out"
    refined = ["--refine", refine, "--refine-candidates", 4] if refine else []
    options = ["--iterative", 3, "--box-size", 3, "--iterative-levels", levels, *refined]
    assert resample(generator_model, out, *options) == 0
    made, before, boxes = source_codes_of(generator_model, out)
    assert len(made) == 12 and sorted(boxes) == sorted(made.images)
    changed = {"top": 0, "bottom": 0}
    for i, name in enumerate(made.images):
        assert len([box for box in boxes[name] if box["level"] == "bottom"]) == 3
        for level, grid in (("top", (4, 4)), ("bottom", GRID)):
            inside = boxes_mask(boxes[name], level, grid)
            assert inside.any() == (level == "bottom" or levels == "both")
            np.testing.assert_array_equal(made.codes[level][i][~inside], before[level][i][~inside])
            changed[level] += int((made.codes[level][i] != before[level][i]).sum())
    assert changed["bottom"] > 12  # the prior does re-draw: codes inside the boxes move
    assert (changed["top"] > 0) == (levels == "both")
    assert all(row["method"] == "resample" for row in read_rows(out))
    assert (out / "labels.csv").read_text().splitlines()[0] == ",".join(LABEL_COLUMNS)  # the layout is unchanged
    run = json.loads((out / "run.json").read_text())
    assert run["iterative"] == {"steps": 3, "box_sizes": [3, 3, 3], "box_schedule": "constant", "levels": levels,
                                "box_unit": "bottom-grid cells", "bottom_grid": [8, 8], "placement": "least-masked"}
    assert run["refine"] == refine


def test_one_step_over_the_whole_grid_is_a_plain_resample(generator_model, tmp_path):
    """The machinery is the masked resampling one: a box that is the whole grid keeps nothing, so the draw is the
    plain resample's, code for code."""
    assert resample(generator_model, tmp_path / "plain", "--seed", 5) == 0
    assert resample(generator_model, tmp_path / "box", "--seed", 5, "--iterative", 1, "--box-size", 8) == 0
    plain, box = read_codes(tmp_path / "plain" / "codes.h5"), read_codes(tmp_path / "box" / "codes.h5")
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(plain.codes[level], box.codes[level])


def test_the_same_seed_gives_the_same_images_and_another_seed_others(generator_model, tmp_path, capsys):
    options = ["--iterative", 4, "--box-schedule", "4,3,2,2", "--per-image", 2, "--batch-size", 8]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert resample(generator_model, tmp_path / name, "--seed", seed, *options) == 0
    a, b, c = (read_codes(tmp_path / name / "codes.h5") for name in "abc")
    np.testing.assert_array_equal(a.codes["bottom"], b.codes["bottom"])
    assert read_boxes(tmp_path / "a") == read_boxes(tmp_path / "b") != read_boxes(tmp_path / "c")
    assert (a.codes["bottom"] != c.codes["bottom"]).any()
    for row in read_rows(tmp_path / "a"):
        first, again = (np.asarray(Image.open(tmp_path / name / "images" / f"{row['image']}.png")) for name in "ab")
        np.testing.assert_array_equal(first, again)
    # the two variants of one source take other boxes
    boxes = read_boxes(tmp_path / "a")
    assert boxes["resample_bkl_000000"] != boxes["resample_bkl_000001"]
    assert [box["height"] for box in boxes["resample_bkl_000000"]] == [4, 3, 2, 2]


def test_jsonl_lines_carry_the_boxes(generator_model, tmp_path, capsys):
    capsys.readouterr()
    assert main([str(a) for a in ["resample", "--codes", generator_model["codes"], "--model", generator_model["model"],
                                  "--out", tmp_path / "out", "--device", "cpu", "--quiet", "--iterative", 2,
                                  "--box-size", 2, "--jsonl"]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 12
    assert {line["image"]: line["boxes"] for line in lines} == read_boxes(tmp_path / "out")
    assert all(Path(line["path"]).is_file() for line in lines)


def test_resume_after_an_interruption_gives_the_uninterrupted_output(generator_model, tmp_path, monkeypatch):
    from skinaug.storage import writer as output

    options = ["--iterative", 2, "--box-size", 3, "--batch-size", 5]
    assert resample(generator_model, tmp_path / "whole", *options) == 0
    original, calls = output.DatasetWriter.write_batch, {"n": 0}

    def interrupted(self, *args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(output.DatasetWriter, "write_batch", interrupted)
    assert resample(generator_model, tmp_path / "cut", *options) == 130
    monkeypatch.setattr(output.DatasetWriter, "write_batch", original)
    assert len(list((tmp_path / "cut" / "images").glob("*.png"))) == 5
    # other iterative settings are another plan: refused, the interrupted output left as it was
    assert resample(generator_model, tmp_path / "cut", "--iterative", 2, "--box-size", 2, "--batch-size", 5,
                    "--resume") == 1
    assert resample(generator_model, tmp_path / "cut", *options, "--resume") == 0
    assert read_rows(tmp_path / "whole") == read_rows(tmp_path / "cut")
    assert read_boxes(tmp_path / "whole") == read_boxes(tmp_path / "cut")
    whole, cut = read_codes(tmp_path / "whole" / "codes.h5"), read_codes(tmp_path / "cut" / "codes.h5")
    np.testing.assert_array_equal(whole.codes["bottom"], cut.codes["bottom"])


@pytest.mark.parametrize("options, message", [
    (["--iterative", "2", "--box-size", "9"], "a box of 9 does not fit the 8x8 bottom grid"),
    (["--iterative", "2", "--box-size", "0"], "a box of 0 does not fit"),
    (["--iterative", "2", "--box-size", "-3"], "a box of -3 does not fit"),
    (["--iterative", "3", "--box-schedule", "2,2"], "lists 2 sizes for --iterative 3"),
    (["--iterative", "0"], "--iterative must be at least 1"),
    (["--box-size", "2"], "go with --iterative STEPS"),
    (["--box-schedule", "shrink"], "go with --iterative STEPS"),
    (["--iterative", "2", "--iterative-levels", "top"], "must be bottom or both"),
    (["--iterative", "2", "--mask-dir", "."], "choose one"),
    (["--iterative", "2", "--method", "rand-bottom"], "goes with --method resample"),
    (["--iterative", "2", "--backend", "onnx"], "does not apply to --backend onnx"),
])
def test_bad_iterative_options_are_one_line_usage_errors(generator_model, tmp_path, capsys, options, message):
    capsys.readouterr()
    assert resample(generator_model, tmp_path / "out", *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_both_levels_on_a_one_level_model_is_a_usage_error(tiny_model_one_level, tmp_path, capsys):
    capsys.readouterr()
    assert main(["resample", str(tiny_model_one_level.dataset.images), "--labels",
                 str(tiny_model_one_level.dataset.labels_csv), "--model", str(tiny_model_one_level.path), "--out",
                 str(tmp_path / "out"), "--iterative", "2", "--iterative-levels", "both", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this model has one level" in err[0]


def test_the_benchmark_prints_seconds_per_image_and_the_glide_reference(generator_model):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "iterative_resample.py"
    done = subprocess.run([sys.executable, str(script), "--model", str(generator_model["model"]), "--codes",
                           str(generator_model["codes"]), "--steps", "2", "--box-size", "3", "--limit", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "iterative_resample" and result["images"] == 4
    assert result["iterative"]["box_sizes"] == [3, 3] and result["device"].endswith("threads")
    assert result["seconds_per_image"] >= result["draw_seconds_per_image"] > 0
    assert result["seconds_per_step"] == pytest.approx(result["draw_seconds_per_image"] / 2, abs=1e-4)  # rounded
    assert result["reference"]["seconds_per_image"] == 80
