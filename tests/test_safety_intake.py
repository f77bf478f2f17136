"""Data safety at intake and naming (issue 11): names made from data stay inside --out and stay distinct;
nothing read from DATA is left out in silence; symlinked subsets are followed; memory per image is
bounded in bytes; the image cache follows replaced files and never unpickles."""

import csv
import hashlib
import json
import logging
import os
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinaug import runtime
from skinaug.data import scan as data
from skinaug.cli import main
from skinaug.storage.codefile import read_codes, write_codes
from skinaug.data.scan import Sample, load_image, load_images, scan_dataset
from skinaug.errors import BadImage, SkinaugError
from skinaug.storage.image_cache import build_cache
from skinaug.naming import safe_name, unique_names

READS = "(skinaug reads .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .gif)"
STRICT_HINT = "--strict makes this an error"  # as the commands print it
STRICT_HINT_PYTHON = "strict=True makes this an error"  # as a library call logs it


def h(text: str) -> str:
    """The hash suffix a changed name carries: the first 8 hex digits of the SHA-256 of the original text."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run(args) -> int:
    return main([str(a) for a in args])


def read_rows(out: Path) -> list[dict]:
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- A. names made from data


def test_unsafe_text_becomes_one_safe_path_component():
    hostile, backslash, nul, long = "../../../../../../ESCAPED", "a\\b", "nul\0byte", "x" * 300
    assert safe_name("nevus") == "nevus" and safe_name("c.v2") == "c.v2"  # safe names are kept as they are
    assert safe_name(hostile) == f"_ESCAPED-{h(hostile)}"
    assert safe_name("a/b") == f"a_b-{h('a/b')}"
    assert safe_name(backslash) == f"a_b-{h(backslash)}"
    assert safe_name(nul) == f"nul_byte-{h(nul)}"
    assert safe_name("..") == f"name-{h('..')}"
    assert safe_name(".hidden") == f"hidden-{h('.hidden')}"
    assert safe_name("") == f"name-{h('')}"
    assert safe_name("CON") == f"_CON-{h('CON')}"  # reserved on Windows
    assert safe_name(long) == "x" * 91 + f"-{h(long)}" and len(safe_name(long)) == 100


def test_names_that_clean_to_the_same_text_or_differ_in_case_stay_distinct():
    assert unique_names(["a/b", "a_b", "A_B", "nevus"]) == [f"a_b-{h('a/b')}", "a_b", f"A_B-{h('1:A_B')}", "nevus"]
    assert unique_names(["x"], taken=["X"]) == [f"x-{h('1:x')}"]


def test_hostile_class_names_of_a_model_never_write_outside_out(generator_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)
    config = json.loads((model / "config.json").read_text())
    hostile = ["../../../../../../ESCAPED", "a/b", "a_b"]  # the model's three classes, renamed
    config["class_names"] = hostile
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "a" / "b" / "c" / "d" / "e" / "out"
    before = files_under(tmp_path)

    assert run(["synthesize", "--model", model, "--out", out, "--per-class", 1, "--device", "cpu", "--quiet"]) == 0

    assert {p for p in files_under(tmp_path) - before if out not in p.parents} == set()
    expected = [f"synthesize__ESCAPED-{h(hostile[0])}_000000", f"synthesize_a_b-{h('a/b')}_000000", "synthesize_a_b_000000"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{name}.png" for name in expected)
    assert [(row["image"], row["label"]) for row in read_rows(out)] == list(zip(expected, hostile))  # true labels kept


def test_decode_names_from_a_code_file_stay_inside_out_and_distinct(generator_model, tmp_path):
    source = read_codes(generator_model["codes"])
    names = ["../../evil", "a/b", "img_00", "IMG_00"]
    codes = tmp_path / "hostile.h5"
    write_codes(codes, source.attrs, {level: values.shape[1:] for level, values in source.codes.items()},
                {level: values[:4] for level, values in source.codes.items()}, names, source.labels[:4], source.groups[:4])
    out = tmp_path / "deep" / "out"
    before = files_under(tmp_path)

    assert run(["decode", codes, "--model", generator_model["model"], "--out", out, "--device", "cpu", "--quiet"]) == 0

    assert {p for p in files_under(tmp_path) - before if out not in p.parents} == set()
    expected = [f"_evil_rec-{h('../../evil_rec')}", f"a_b_rec-{h('a/b_rec')}", "img_00_rec", f"IMG_00_rec-{h('1:IMG_00_rec')}"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{name}.png" for name in expected)
    rows = read_rows(out)
    assert [(row["image"], row["source_top"], row["source_bottom"]) for row in rows] == list(zip(expected, names, names))


def test_augment_names_originals_safely_and_generated_images_around_them(generator_model, tmp_path):
    """Originals keep their names where safe; a backslash name is cleaned, a name that differs only in case
    is told apart, and an original named like a generated image (an augmented OUT_DIR augmented again)
    keeps its name while the generated image takes the next number."""
    folders = {"bkl": ["IMG_02", "a\\b", "gen_synthesize_bkl_000000", "img_02"],
               "melanoma": [f"m{i}" for i in range(4)], "nevus": [f"n{i}" for i in range(4)]}
    data_dir = tmp_path / "data"
    for label, names in folders.items():
        (data_dir / label).mkdir(parents=True)
        for i, name in enumerate(names):
            Image.new("RGB", (48, 40), (40 * i, 100, 150)).save(data_dir / label / f"{name}.png")
    out = tmp_path / "aug"

    assert run(["augment", data_dir, "--model", generator_model["model"], "--out", out, "--factor", 1.25,
                "--methods", "synthesize", "--device", "cpu", "--quiet"]) == 0

    originals = ["IMG_02", f"a_b-{h('a' + chr(92) + 'b')}", "gen_synthesize_bkl_000000", f"img_02-{h('1:img_02')}",
                 *folders["melanoma"], *folders["nevus"]]
    generated = ["gen_synthesize_bkl_000001", "gen_synthesize_melanoma_000000", "gen_synthesize_nevus_000000"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{name}.png" for name in originals + generated)
    rows = {row["image"]: row for row in read_rows(out)}
    assert (rows[originals[1]]["source_top"], rows[originals[1]]["label"], rows[originals[1]]["method"]) == (
        "a\\b", "bkl", "original")
    assert (rows["gen_synthesize_bkl_000001"]["label"], rows["gen_synthesize_bkl_000001"]["method"]) == ("bkl", "synthesize")
    assert json.loads((out / "run.json").read_text())["input"] == {
        "images": 12, "left_out": 0, "left_out_by_reason": {}, "left_out_first": [], "files_without_row": 0}


# --------------------------------------------------------------------------- B. nothing left out in silence


def _with_problems(dataset) -> Path:
    """The tiny dataset plus a CSV row without a file, a row naming a .heic file and an empty PNG."""
    with open(dataset.labels_csv, "a") as handle:
        handle.write("ghost,nevus,L9\nscan_x,nevus,L9\n")
    (dataset.images / "scan_x.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (dataset.images / "loose.avif").write_bytes(b"not listed in the CSV: a file without a row, not reported")
    (dataset.images / "img_03.png").write_bytes(b"")
    return dataset.images.resolve()


def test_scan_warns_about_rows_without_file_and_unsupported_types(tiny_dataset, capsys):
    root = _with_problems(tiny_dataset)
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    assert len(dataset) == 12 and dataset.missing == ["ghost"] and dataset.files_without_row == 0
    assert dataset.skipped == [("scan_x", f"unsupported file type: .heic {READS}")]
    assert capsys.readouterr().err == (f"warning: 2 inputs of {root} and labels.csv left out: no image file: 1 (ghost); "
                                       f"unsupported file type: 1 (scan_x). {STRICT_HINT_PYTHON}\n")


def test_class_folders_report_unsupported_files_and_read_gifs(tmp_path, capsys):
    (tmp_path / "nevus").mkdir()
    frames = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))]
    frames[0].save(tmp_path / "nevus" / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "nevus" / "still.png")
    (tmp_path / "nevus" / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (tmp_path / "nevus" / "notes.txt").write_text("not an image type: ignored")
    dataset = scan_dataset(tmp_path)
    assert [s.name for s in dataset.samples] == ["moving", "still"]
    assert dataset.skipped == [("nevus/phone.heic", f"unsupported file type: .heic {READS}")]
    assert "unsupported file type: 1 (nevus/phone.heic)" in capsys.readouterr().err
    assert load_image(dataset.samples[0].path, 32)[16, 16].tolist() == [200, 30, 30]  # the first frame


def test_encode_reports_what_it_left_out_on_stderr_and_in_json_even_quiet(tiny_model, tiny_dataset, tmp_path, capsys):
    root = _with_problems(tiny_dataset)
    out = tmp_path / "codes.h5"
    args = ["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path, "--out", out,
            "--device", "cpu", "--quiet"]
    assert run([*args, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["images"] == 11 and read_codes(out).images == [n for n in tiny_dataset.names if n != "img_03"]
    assert summary["input"] == {
        "images": 11, "left_out": 3,
        "left_out_by_reason": {"no image file": 1, "unsupported file type": 1, "empty file": 1},
        "left_out_first": [{"name": "ghost", "reason": "no image file"},
                           {"name": "scan_x", "reason": f"unsupported file type: .heic {READS}"},
                           {"name": "img_03", "reason": "empty file"}],
        "files_without_row": 0}
    assert captured.err.splitlines() == [
        f"warning: 2 inputs of {root} and labels.csv left out: no image file: 1 (ghost); unsupported file type: 1 (scan_x). "
        f"{STRICT_HINT}",
        f"warning: 1 unreadable image left out: img_03 (empty file). {STRICT_HINT}"]

    assert run([*args, "--strict", "--overwrite"]) == 1
    assert "scan_x: unsupported file type: .heic" in capsys.readouterr().err


def test_mix_from_data_records_what_it_left_out_in_run_json(tiny_model, tiny_dataset, tmp_path, capsys):
    _with_problems(tiny_dataset)
    out = tmp_path / "mix"
    assert run(["mix", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path, "--out", out,
                "-n", 4, "--device", "cpu", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    recorded = json.loads((out / "run.json").read_text())["input"]
    assert recorded == summary["input"]
    assert (recorded["images"], recorded["left_out"], [item["name"] for item in recorded["left_out_first"]]) == (
        11, 3, ["ghost", "scan_x", "img_03"])
    assert all(row["source_top"] != "img_03" and row["source_bottom"] != "img_03" for row in read_rows(out))


# --------------------------------------------------------------------------- C. symlinked subsets


def test_a_folder_of_symlinks_is_a_dataset(tiny_dataset, tmp_path):
    subset = tmp_path / "subset"
    subset.mkdir()
    chosen = tiny_dataset.names[::2]
    for name in chosen:
        (subset / f"{name}.png").symlink_to(tiny_dataset.images / f"{name}.png")
    dataset = scan_dataset(subset)
    assert [(s.name, s.path) for s in dataset.samples] == [
        (name, (tiny_dataset.images / f"{name}.png").resolve()) for name in chosen]
    labelled = scan_dataset(subset, tiny_dataset.labels_csv)
    assert [s.name for s in labelled.samples] == chosen and labelled.rows_without_file == 6
    assert [labelled.class_names[s.label] for s in labelled.samples] == tiny_dataset.labels[::2]


def test_symlinked_class_folders_are_followed_and_loops_end(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "mel"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(elsewhere / "m1.png")
    root = tmp_path / "data"
    (root / "nevus").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(root / "nevus" / "n1.png")
    (root / "melanoma").symlink_to(elsewhere, target_is_directory=True)
    (root / "nevus" / "again").symlink_to(root, target_is_directory=True)  # a loop
    dataset = scan_dataset(root)
    assert [(s.name, dataset.class_names[s.label]) for s in dataset.samples] == [("m1", "melanoma"), ("n1", "nevus")]
    assert dataset.skipped == [("nevus/again", "folder already scanned: a link loop or a second link to it")]


# --------------------------------------------------------------------------- D. memory bounded in bytes


def test_the_decoded_size_is_bounded_in_bytes_so_bit_depth_counts(tmp_path, monkeypatch):
    Image.new("L", (1000, 1000), 7).save(tmp_path / "gray8.png")
    Image.fromarray(np.full((1000, 1000), 1800, np.uint16)).save(tmp_path / "gray16.png")
    monkeypatch.setattr(data, "MAX_DECODED_BYTES", 1_500_000)
    assert load_image(tmp_path / "gray8.png", 32)[0, 0].tolist() == [7, 7, 7]  # 1.0 MB: within the limit
    with pytest.raises(BadImage) as caught:
        load_image(tmp_path / "gray16.png", 32)  # as many pixels, twice the bytes
    assert str(caught.value) == "too large to decode: 1000x1000 pixels of mode I;16 take 1.9 MiB, over the limit of 1.4 MiB"
    sample = Sample(tmp_path / "gray16.png", "gray16", -1, "")
    with pytest.raises(SkinaugError, match=r"gray16\.png \(strict=True\): too large to decode"):
        load_images([sample], 32, strict=True)
    assert load_images([sample], 32)[2] == [("gray16", str(caught.value))]


def _png_header_only(path: Path, width: int, height: int, colour_type: int) -> None:
    """A PNG whose header announces width x height 8-bit pixels, followed by a few bytes of image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_an_image_too_large_in_bytes_is_refused_before_decoding(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 9000, 9000, 6)  # RGBA: 81 M pixels (under the pixel limit), 309 MiB
    with pytest.raises(BadImage) as caught:
        load_image(tmp_path / "bomb.png", 32)
    assert str(caught.value) == "too large to decode: 9000x9000 pixels of mode RGBA take 309.0 MiB, over the limit of 256.0 MiB"


def test_a_large_16_bit_image_is_shrunk_before_its_float_conversion(tmp_path):
    side = 2100  # 4.4 M pixels: one float64 copy of the whole image is 35 MB
    ramp = np.tile(np.linspace(0, 65535, side).astype(np.uint16), (side, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    tracemalloc.start()
    try:
        pixels = load_image(tmp_path / "deep.png", 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    row = pixels[16, :, 0].astype(int)
    assert row[0] <= 5 and row[-1] >= 250 and (np.diff(row) >= 0).all()  # scaled, not clipped, left to right


def test_exif_orientation_survives_the_large_image_path(tmp_path, monkeypatch):
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    monkeypatch.setattr(data, "LARGE_PIXELS", 1)
    upright = load_image(tmp_path / "rotated.jpg", 32)
    assert np.abs(upright[2, 16].astype(int) - (255, 0, 0)).max() < 30  # red on top
    assert np.abs(upright[29, 16].astype(int) - (0, 0, 255)).max() < 30  # blue below


# --------------------------------------------------------------------------- E. the image cache


def test_the_image_cache_follows_a_replaced_image(tiny_dataset, tmp_path, monkeypatch):
    cache_path = tmp_path / "train" / "image_cache.npy"
    cache, _ = build_cache(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv).samples, 32, cache_path)
    assert tuple(cache[0, 16, 16]) == tiny_dataset.colours[0]

    def no_decoding(*args, **kwargs):
        raise AssertionError("a matching cache must be reused")

    with monkeypatch.context() as patch:
        patch.setattr("skinaug.storage.image_cache.load_images", no_decoding)
        cache, kept = build_cache(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv).samples, 32, cache_path)
        assert len(kept) == 12

    path = tiny_dataset.images / "img_00.png"
    old = path.stat()
    Image.new("RGB", (48, 40), (1, 2, 3)).save(path)  # same name, same size in bytes
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 2_000_000_000))  # a coarse clock must not hide it
    cache, kept = build_cache(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv).samples, 32, cache_path)
    assert tuple(cache[0, 16, 16]) == (1, 2, 3) and len(kept) == 12


class _Trap:
    """Unpickling this creates the file `path`: proof that a cache was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("bad", ["object array", "garbage", "wrong shape"])
def test_an_object_or_corrupt_cache_is_rebuilt_never_unpickled(tiny_dataset, tmp_path, capsys, bad):
    runtime.logger.setLevel(logging.INFO)  # what the default setup and every command run leave it at
    samples = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv).samples
    cache_path = tmp_path / "image_cache.npy"
    build_cache(samples, 32, cache_path)  # a valid index, then the array is replaced
    marker = tmp_path / "unpickled"
    if bad == "object array":
        np.save(cache_path, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    elif bad == "garbage":
        cache_path.write_bytes(b"not a .npy file")
    else:
        np.save(cache_path, np.zeros((12, 16, 16, 3), np.uint8))
    capsys.readouterr()

    cache, kept = build_cache(samples, 32, cache_path)

    assert not marker.exists()
    assert cache.dtype == np.uint8 and cache.shape == (12, 32, 32, 3) and len(kept) == 12
    assert [tuple(image[16, 16]) for image in cache] == tiny_dataset.colours
    assert f"image cache {cache_path}" in capsys.readouterr().err
    assert np.load(cache_path, allow_pickle=False).dtype == np.uint8  # the rebuilt file is a plain array again
