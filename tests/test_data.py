"""Dataset intake: every CSV dialect, folder layouts, hostile names and files, colour modes, splits."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from skinaug.data import scan as data
from skinaug.data.scan import (
    Dataset,
    check_image_size,
    group_split,
    load_image,
    load_images,
    preprocess,
    scan_dataset,
)
from skinaug.errors import BadImage, SkinaugError, UsageError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_images(folder: Path, names, size=(16, 16), colour=(90, 120, 150)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size, colour).save(folder / name)


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def by_name(dataset: Dataset) -> dict[str, tuple[str, str]]:
    """name -> (label string, group): what a dataset says about each image, independent of order."""
    return {s.name: (dataset.class_names[s.label] if s.label >= 0 else None, s.group) for s in dataset.samples}


# ------------------------------------------------------------------------------------------ CSV dialects


def test_generic_csv_gives_labels_groups_and_sorted_classes(tiny_dataset):
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    assert dataset.dialect == "generic"
    assert dataset.class_names == ["bkl", "melanoma", "nevus"]
    assert [s.name for s in dataset.samples] == tiny_dataset.names
    expected = zip(tiny_dataset.names, tiny_dataset.labels, tiny_dataset.lesions)
    assert by_name(dataset) == {name: (label, lesion) for name, label, lesion in expected}
    assert dataset.labels().dtype == np.int64 and dataset.labels().tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.groups() == tiny_dataset.lesions
    assert all(s.path.is_absolute() and s.path.parent == tiny_dataset.images.resolve() for s in dataset.samples)
    assert (dataset.skipped, dataset.rows_without_file, dataset.files_without_row) == ([], 0, 0)


@pytest.mark.parametrize(
    "label_columns, row_values, expected",
    [
        ("diagnosis,benign_malignant,target", ("nevus,benign,0", "melanoma,malignant,1"), ("nevus", "melanoma")),
        ("benign_malignant,target", ("benign,0", "malignant,1"), ("benign", "malignant")),
        ("target", ("0", "1"), ("benign", "malignant")),
    ],
)
def test_isic2020_label_is_diagnosis_else_benign_malignant_else_target(tmp_path, label_columns, row_values, expected):
    make_images(tmp_path / "img", ["ISIC_1.jpg", "ISIC_2.jpg"])
    csv = write_csv(tmp_path / "train.csv", f"image_name,patient_id,sex,{label_columns}",
                    f"ISIC_1,IP_7,male,{row_values[0]}", f"ISIC_2,IP_9,female,{row_values[1]}")
    dataset = scan_dataset(tmp_path / "img", csv)
    assert dataset.dialect == "isic2020"
    assert by_name(dataset) == {"ISIC_1": (expected[0], "IP_7"), "ISIC_2": (expected[1], "IP_9")}


def test_ham10000_metadata(tmp_path):
    make_images(tmp_path / "img", ["ISIC_1.jpg", "ISIC_2.jpg", "ISIC_3.jpg"])
    csv = write_csv(tmp_path / "HAM10000_metadata.csv", "lesion_id,image_id,dx,dx_type,age",
                    "HAM_1,ISIC_1,bkl,histo,80", "HAM_1,ISIC_2,bkl,histo,80", "HAM_2,ISIC_3,nv,follow_up,45")
    dataset = scan_dataset(tmp_path / "img", csv)
    assert dataset.dialect == "ham10000"
    assert dataset.class_names == ["bkl", "nv"]
    assert by_name(dataset) == {"ISIC_1": ("bkl", "HAM_1"), "ISIC_2": ("bkl", "HAM_1"), "ISIC_3": ("nv", "HAM_2")}


def test_isic2019_one_hot_takes_the_column_holding_one(tmp_path):
    make_images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    csv = write_csv(tmp_path / "gt.csv", "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK",
                    "a,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "b,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
                    "c,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0", "d,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0")
    dataset = scan_dataset(tmp_path / "img", csv)
    assert dataset.dialect == "isic2019"
    assert dataset.class_names == ["MEL", "NV", "SCC"]
    assert by_name(dataset) == {"a": ("MEL", ""), "b": ("NV", ""), "c": ("SCC", "")}
    assert dataset.skipped == [("d", "one-hot row marks no class")]


def test_column_overrides_win_over_detection(tmp_path):
    make_images(tmp_path / "img", ["x1.png", "x2.png"])
    csv = write_csv(tmp_path / "l.csv", "image,label,coarse,lesion_id,patient",
                    "x1,nevus,benign,L1,P1", "x2,melanoma,malignant,L2,P1")
    dataset = scan_dataset(tmp_path / "img", csv, label_col="coarse", group_col="patient")
    assert by_name(dataset) == {"x1": ("benign", "P1"), "x2": ("malignant", "P1")}
    odd = write_csv(tmp_path / "odd.csv", "File;Diagnosis", "x1.png;nevus", "x2.png;melanoma")  # ';' as Excel writes
    dataset = scan_dataset(tmp_path / "img", odd, image_col="file", label_col="DIAGNOSIS")
    assert dataset.dialect == "generic"
    assert by_name(dataset) == {"x1": ("nevus", ""), "x2": ("melanoma", "")}


def test_csv_without_usable_columns_names_file_and_columns(tmp_path):
    make_images(tmp_path / "img", ["a.png"])
    csv = write_csv(tmp_path / "meta.csv", "filename,age", "a,30")
    with pytest.raises(SkinaugError, match=r"meta\.csv has no image column .*; its columns are: filename, age"):
        scan_dataset(tmp_path / "img", csv)
    no_label = write_csv(tmp_path / "nolabel.csv", "image,age", "a,30")
    with pytest.raises(SkinaugError, match=r"nolabel\.csv has no label column .*; its columns are: image, age"):
        scan_dataset(tmp_path / "img", no_label)
    with pytest.raises(SkinaugError, match=r"has no column 'dx'; its columns are: filename, age"):
        scan_dataset(tmp_path / "img", csv, image_col="filename", label_col="dx")


def test_names_may_omit_the_extension_or_name_a_subfolder(tmp_path):
    make_images(tmp_path / "img", ["a.jpg", "b.png", "c.v2.jpeg"])
    make_images(tmp_path / "img" / "more", ["d.JPG"])
    csv = write_csv(tmp_path / "l.csv", "image,label", "a,x", "b.png,y", "c.v2,x", "more/d.JPG,y")
    dataset = scan_dataset(tmp_path / "img", csv)
    assert by_name(dataset) == {"a": ("x", ""), "b": ("y", ""), "c.v2": ("x", ""), "d": ("y", "")}
    assert [s.path.name for s in dataset.samples] == ["a.jpg", "b.png", "c.v2.jpeg", "d.JPG"]


def test_rows_without_file_and_files_without_row_are_counted_and_left_out(tiny_dataset):
    lines = tiny_dataset.labels_csv.read_text().splitlines()
    write_csv(tiny_dataset.labels_csv, *lines[:-2], "ghost_1,nevus,L9", "ghost_2,bkl,L9")  # drops img_10, img_11
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    assert len(dataset) == 10 and {"img_10", "img_11", "ghost_1"}.isdisjoint(by_name(dataset))
    assert (dataset.rows_without_file, dataset.files_without_row) == (2, 2)


def test_empty_label_and_empty_group_cells(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    csv = write_csv(tmp_path / "l.csv", "image,label,lesion_id", "a,nevus,", "b,,L2")
    dataset = scan_dataset(tmp_path / "img", csv)
    assert by_name(dataset) == {"a": ("nevus", "")}
    assert dataset.skipped == [("b", "no label")]


# ------------------------------------------------------------------------------------------ folder layouts


def test_class_subfolders_give_labels(tmp_path):
    make_images(tmp_path / "nevus", ["n1.jpg", "n2.png"])
    make_images(tmp_path / "melanoma", ["m1.jpg"])
    make_images(tmp_path / "melanoma" / "extra", ["m2.jpg"])
    make_images(tmp_path, ["stray.jpg"])
    (tmp_path / "notes.txt").write_text("not an image extension: ignored")
    make_images(tmp_path / ".hidden", ["h.jpg"])
    dataset = scan_dataset(tmp_path)
    assert dataset.dialect == "folders"
    assert dataset.class_names == ["melanoma", "nevus"]
    assert by_name(dataset) == {
        "m1": ("melanoma", ""), "m2": ("melanoma", ""), "n1": ("nevus", ""), "n2": ("nevus", "")}
    assert dataset.skipped == [("stray.jpg", "outside the class folders")]


def test_flat_folder_without_csv_is_unlabelled(tmp_path):
    make_images(tmp_path, ["b.png", "a.jpg"])
    dataset = scan_dataset(tmp_path)
    assert (dataset.dialect, dataset.class_names) == ("unlabelled", [])
    assert [(s.name, s.label, s.group) for s in dataset.samples] == [("a", -1, ""), ("b", -1, "")]


def test_fixed_class_names_set_the_order_and_reject_unknown_labels(tiny_dataset):
    order = ["nevus", "melanoma", "bkl", "vasc"]
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, class_names=order)
    assert dataset.class_names == order
    assert dataset.labels().tolist() == [2] * 4 + [1] * 4 + [0] * 4
    # issue 24: labels a model does not know are skipped with a count, and refused under strict (was: always refused)
    with pytest.raises(SkinaugError, match=r"labels not among the classes \['nevus', 'vasc'\]: bkl, melanoma"):
        scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, class_names=["nevus", "vasc"], strict=True)
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, class_names=["nevus", "vasc"])
    assert len(dataset) == 4 and len(dataset.skipped) == 8


def test_duplicate_stems_are_an_error(tmp_path):
    make_images(tmp_path / "img", ["a.jpg", "a.png", "b.jpg"])
    with pytest.raises(SkinaugError, match=r"unique.*'a' is a\.jpg and a\.png"):
        scan_dataset(tmp_path / "img")
    csv = write_csv(tmp_path / "l.csv", "image,label", "a,x", "b,y")
    with pytest.raises(SkinaugError, match=r"'a' matches several files: a\.jpg, a\.png"):
        scan_dataset(tmp_path / "img", csv)
    twice = write_csv(tmp_path / "twice.csv", "image,label", "b,y", "b.jpg,y")
    with pytest.raises(SkinaugError, match=r"twice\.csv lists image 'b\.jpg' twice \(again on line 3\)"):
        scan_dataset(tmp_path / "img", twice)
    make_images(tmp_path / "cls" / "x", ["same.jpg"])
    make_images(tmp_path / "cls" / "y", ["same.jpg"])
    with pytest.raises(SkinaugError, match=r"'same' is x/same\.jpg and y/same\.jpg"):
        scan_dataset(tmp_path / "cls")


# ------------------------------------------------------------------------------------------ hostile names


def test_csv_names_escaping_the_folder_are_rejected_without_opening(tmp_path, monkeypatch):
    """A CSV is where hostile names come from; symlinks in the folder are the user's own and are followed
    (tests/test_safety_intake.py covers them)."""
    make_images(tmp_path / "img", ["ok.png"])
    make_images(tmp_path, ["secret.png"])
    (tmp_path / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    outside = tmp_path / "outside_dir"
    make_images(outside, ["o.png"])
    (tmp_path / "img" / "linkdir").symlink_to(outside, target_is_directory=True)
    csv = write_csv(tmp_path / "l.csv", "image,label", "ok,x", "../secret.png,x", f"{tmp_path / 'secret.png'},x",
                    "..\\secret.png,x", "link,x")

    def refuse(*args, **kwargs):
        raise AssertionError("scan_dataset opened an image")

    monkeypatch.setattr(data.Image, "open", refuse)
    dataset = scan_dataset(tmp_path / "img", csv)
    assert by_name(dataset) == {"ok": ("x", ""), "link": ("x", "")}
    assert sorted(dataset.skipped) == sorted([
        ("../secret.png", "escapes the image folder"), (f"{tmp_path / 'secret.png'}", "escapes the image folder"),
        ("../secret.png", "escapes the image folder"),  # the backslash spelling, normalised
    ])
    assert dataset.rows_without_file == 0
    folders = scan_dataset(tmp_path / "img")  # the linked folder is a class folder like any other
    assert by_name(folders) == {"o": ("linkdir", "")}
    assert folders.skipped == [("link.png", "outside the class folders"), ("ok.png", "outside the class folders")]


def test_symlink_inside_the_folder_is_kept(tmp_path):
    make_images(tmp_path / "img" / "store", ["real.png"])
    (tmp_path / "img" / "alias.png").symlink_to(tmp_path / "img" / "store" / "real.png")
    csv = write_csv(tmp_path / "l.csv", "image,label", "alias,x")
    dataset = scan_dataset(tmp_path / "img", csv)
    real = (tmp_path / "img" / "store" / "real.png").resolve()
    assert [(s.name, s.path) for s in dataset.samples] == [("alias", real)]


def test_strict_makes_skipped_rows_fatal_but_not_unlisted_files(tiny_dataset):
    lines = tiny_dataset.labels_csv.read_text().splitlines()
    write_csv(tiny_dataset.labels_csv, *lines[:-1])  # img_11 has no row: a CSV may select a subset
    assert len(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, strict=True)) == 11
    write_csv(tiny_dataset.labels_csv, *lines, "../escape.png,nevus,L0")
    with pytest.raises(SkinaugError, match=r"strict=True.*\.\./escape\.png: escapes the image folder"):
        scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, strict=True)
    write_csv(tiny_dataset.labels_csv, *lines, "ghost,nevus,L0")
    with pytest.raises(SkinaugError, match=r"1 CSV rows have no image file \(e\.g\. ghost\)"):
        scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv, strict=True)
    assert scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv).rows_without_file == 1


def test_missing_or_empty_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(SkinaugError, match="image folder not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkinaugError, match=r"no images found in .*empty"):
        scan_dataset(tmp_path / "empty")
    with pytest.raises(SkinaugError, match=r"labels file not found: .*missing\.csv"):
        scan_dataset(tmp_path / "empty", tmp_path / "missing.csv")
    make_images(tmp_path / "img", ["a.png"])
    csv = write_csv(tmp_path / "l.csv", "image,label", "zzz,x")
    with pytest.raises(SkinaugError, match=r"no images found .*for the 1 rows of l\.csv \(e\.g\. no file for 'zzz'\)"):
        scan_dataset(tmp_path / "img", csv)


# ------------------------------------------------------------------------------------------ hostile files


def test_unusable_files_raise_bad_image_with_the_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("I am a text file, not a JPEG")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    whole = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    expected = {"empty.jpg": "empty file", "text.jpg": "not an image", "cut.jpg": "truncated or corrupt"}
    for name, reason in expected.items():
        with pytest.raises(BadImage) as caught:
            load_image(tmp_path / name, 32)
        assert str(caught.value) == reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert load_image(tmp_path / "full.jpg", 32).shape == (32, 32, 3)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    Image.new("RGB", (50, 40), "red").save(tmp_path / "bomb.png")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(BadImage, match=r"^decompression bomb: 50x40 pixels"):
        load_image(tmp_path / "bomb.png", 32)
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 2000)
    assert load_image(tmp_path / "bomb.png", 32)[0, 0].tolist() == [255, 0, 0]


def test_inputs_are_never_modified(tiny_dataset):
    paths = sorted(tiny_dataset.images.iterdir())
    before = [(hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths]
    load_images(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv), 32)
    assert [(hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths] == before
    assert sorted(tiny_dataset.images.iterdir()) == paths


# ------------------------------------------------------------------------------------------ colour modes


def _palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.paste(1, (16, 0, 32, 32))  # right half is palette entry 1
    if transparent:
        img.info["transparency"] = 1
    return img


COLOUR_CASES = {
    "L": (Image.new("L", (32, 32), 100), (100, 100, 100), (100, 100, 100)),
    "1": (Image.new("1", (32, 32), 1), (255, 255, 255), (255, 255, 255)),
    "LA transparent": (Image.new("LA", (32, 32), (0, 0)), (255, 255, 255), (255, 255, 255)),
    "RGBA half": (Image.new("RGBA", (32, 32), (255, 0, 0, 128)), (255, 127, 127), (255, 127, 127)),
    "RGBA opaque": (Image.new("RGBA", (32, 32), (12, 34, 56, 255)), (12, 34, 56), (12, 34, 56)),
    "CMYK": (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), (255, 0, 0), (255, 0, 0)),
    "P": (_palette_image(False), (10, 20, 30), (200, 100, 50)),
    "P transparency": (_palette_image(True), (10, 20, 30), (255, 255, 255)),
    "I;16 max": (Image.fromarray(np.full((32, 32), 65535, np.uint16)), (255, 255, 255), (255, 255, 255)),
    "I;16 mid": (Image.fromarray(np.full((32, 32), 32896, np.uint16)), (128, 128, 128), (128, 128, 128)),
    "I 16-bit": (Image.fromarray(np.full((32, 32), 65535, np.int32)), (255, 255, 255), (255, 255, 255)),
    "F unit": (Image.fromarray(np.full((32, 32), 0.5, np.float32)), (128, 128, 128), (128, 128, 128)),
    "F range": (Image.fromarray(np.tile(np.linspace(-5, 5, 32, dtype=np.float32), (32, 1))), (0,) * 3, (255,) * 3),
}


@pytest.mark.parametrize("case", COLOUR_CASES)
def test_every_colour_mode_becomes_8_bit_rgb(case):
    image, left, right = COLOUR_CASES[case]
    pixels = preprocess(image, 32)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert np.abs(pixels[16, 0].astype(int) - left).max() <= 1
    assert np.abs(pixels[16, 31].astype(int) - right).max() <= 1


def test_16_bit_png_file_is_scaled_not_clipped(tmp_path):
    ramp = np.repeat(np.array([[0, 257 * 64, 65535, 65535]], np.uint16), 32, axis=0).repeat(8, axis=1)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels = load_image(tmp_path / "deep.png", 32)
    assert pixels[0, [0, 8, 16, 31], 0].tolist() == [0, 64, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    stored.save(tmp_path / "plain.jpg", quality=95)
    upright = load_image(tmp_path / "rotated.jpg", 32)
    plain = load_image(tmp_path / "plain.jpg", 32)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert np.abs(upright[2, 16].astype(int) - red).max() < 30  # rotated: red on top, blue below
    assert np.abs(upright[29, 16].astype(int) - blue).max() < 30
    assert np.abs(plain[16, 2].astype(int) - red).max() < 30  # the 64x32 crop keeps its middle: red|blue
    assert np.abs(plain[16, 29].astype(int) - blue).max() < 30


# ------------------------------------------------------------------------------------------ resize and crop


@pytest.mark.parametrize("size", [(90, 30), (30, 90), (20, 20), (400, 300)])
def test_shorter_side_fills_the_square_and_the_centre_is_kept(size):
    width, height = size
    side = min(size)
    image = Image.new("RGB", size, (220, 0, 0))  # red margins that the centre crop must drop
    left, top = (width - side) // 2, (height - side) // 2
    image.paste((0, 200, 0), (left, top, left + side, top + side))
    image.paste((0, 0, 250), (left + side // 4, top + side // 4, left + 3 * side // 4, top + 3 * side // 4))
    pixels = preprocess(image, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[16, 16].astype(int) - (0, 0, 250)).max() <= 2  # centre blue square in the middle
    assert np.abs(pixels[2, 2].astype(int) - (0, 200, 0)).max() <= 12  # green frame around it, no red
    assert np.abs(pixels[29, 29].astype(int) - (0, 200, 0)).max() <= 12
    assert pixels[..., 0].max() <= 40


# ------------------------------------------------------------------------------------------ load_images


def test_load_images_keeps_order_and_skips_bad_files(tiny_dataset):
    (tiny_dataset.images / "img_03.png").write_bytes(b"")
    (tiny_dataset.images / "img_07.png").write_text("nope")
    dataset = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    ticks = []
    images, kept, skipped = load_images(dataset, 32, workers=3, progress=ticks.append)
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert [s.name for s in kept] == [n for n in tiny_dataset.names if n not in ("img_03", "img_07")]
    assert skipped == [("img_03", "empty file"), ("img_07", "not an image")]
    colours = dict(zip(tiny_dataset.names, tiny_dataset.colours))
    assert [tuple(img[16, 16]) for img in images] == [colours[s.name] for s in kept]
    assert ticks == [1] * 12
    with pytest.raises(SkinaugError, match=r"img_0[37]\.png \(strict=True\): (empty file|not an image)"):
        load_images(dataset.samples, 32, strict=True)


def test_load_images_of_nothing_is_an_empty_stack():
    images, kept, skipped = load_images([], 48)
    assert images.shape == (0, 48, 48, 3) and kept == [] and skipped == []


# ------------------------------------------------------------------------------------------ group_split


def _lesion_groups(seed=0, n=200):
    rng = np.random.default_rng(seed)
    groups = [f"L{rng.integers(0, 60)}" if rng.random() < 0.7 else "" for _ in range(n)]
    labels = rng.integers(0, 4, n)
    return groups, labels


@pytest.mark.parametrize("stratify", (False, True))
@pytest.mark.parametrize("val_fraction", (0.1, 0.25, 0.5))
def test_group_split_never_puts_a_lesion_on_both_sides(stratify, val_fraction):
    groups, labels = _lesion_groups()
    train, val = group_split(groups, val_fraction, seed=3, labels=labels if stratify else None)
    assert train.dtype == val.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(groups)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert {groups[i] for i in train if groups[i]}.isdisjoint({groups[i] for i in val if groups[i]})
    assert abs(len(val) / len(groups) - val_fraction) < 0.1
    if stratify:
        assert set(labels[val].tolist()) == set(labels.tolist())


def test_group_split_is_deterministic_for_a_seed():
    groups, labels = _lesion_groups()
    first = group_split(groups, 0.2, seed=7, labels=labels)
    again = group_split(groups, 0.2, seed=7, labels=labels)
    other = group_split(groups, 0.2, seed=8, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_group_split_edge_cases():
    assert [a.tolist() for a in group_split(["a", "b", "c"], 0.0, seed=0)] == [[0, 1, 2], []]
    assert [a.tolist() for a in group_split(["", ""], 0.01, seed=0)] in ([[0], [1]], [[1], [0]])
    train, val = group_split(["g", "g", "g", ""], 0.9, seed=0)  # one side each, the lesion kept whole
    assert sorted([train.tolist(), val.tolist()]) == [[0, 1, 2], [3]]
    rare = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    labels = [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]  # class 1: lesion 'a' (2 images) and 'i'
    train, val = group_split(rare, 0.1, seed=0, labels=labels)
    assert 1 in [labels[i] for i in val] and 1 in [labels[i] for i in train]
    with pytest.raises(SkinaugError, match="all 3 images belong to group 'p'"):
        group_split(["p", "p", "p"], 0.2, seed=0)
    with pytest.raises(UsageError):
        group_split(["a", "b"], 1.0, seed=0)


# ------------------------------------------------------------------------------------------ image size


@pytest.mark.parametrize("size", (32, 64, 256, 512))
def test_valid_image_sizes(size):
    assert check_image_size(size) == size


@pytest.mark.parametrize("size", (0, 24, 31, 100, 520, 1024, True, 64.0))
def test_invalid_image_sizes_are_usage_errors(size):
    with pytest.raises(UsageError, match="multiple of 8 from 32 to 512"):
        check_image_size(size)


# ------------------------------------------------------------------------------------------ real data


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


def test_ham10000_150_scans_and_loads(shared_data):
    root = shared_data / "ham10000-150"
    dataset = scan_dataset(root / "images", root / "labels.csv")
    assert len(dataset) == 8031 and dataset.dialect == "generic"
    assert dataset.class_names == ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]
    assert np.bincount(dataset.labels()).tolist() == [251, 405, 873, 97, 884, 5404, 117]
    groups = dataset.groups()
    assert all(g.startswith("HAM_") for g in groups) and len(set(groups)) < len(groups)
    assert (dataset.rows_without_file, dataset.files_without_row, dataset.skipped) == (0, 0, [])
    images, kept, skipped = load_images(dataset.samples[:6], 64)
    assert images.shape == (6, 64, 64, 3) and skipped == [] and kept == dataset.samples[:6]
    assert all(img.std() > 5 for img in images)  # real photographs, not blank frames
    train, val = group_split(groups, 0.1, seed=0, labels=dataset.labels())
    assert {groups[i] for i in train}.isdisjoint(groups[i] for i in val)


def test_isic_uda1_256_scans_without_groups(shared_data):
    root = shared_data / "isic-uda1-256"
    dataset = scan_dataset(root / "images", root / "labels.csv")
    assert len(dataset) == 449 and dataset.class_names == ["melanoma", "nevus"]
    assert np.bincount(dataset.labels()).tolist() == [132, 317]
    assert set(dataset.groups()) == {""}
    assert load_image(dataset.samples[0].path, 256).shape == (256, 256, 3)
