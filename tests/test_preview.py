"""`skinaug preview`: rows per folder, method or class, and an --out that never replaces what it does not own."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from skinaug.cli import main
from skinaug.reports.preview import SOFTWARE, is_contact_sheet


def run(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one CLI call."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generated_folder(path: Path, rows: list[tuple[str, str, str]], colour: int) -> Path:
    """A folder as skinaug writes it: images/ of 8x8 PNGs of one grey level, labels.csv with image,label,method."""
    (path / "images").mkdir(parents=True)
    for name, _, _ in rows:
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path / "images" / f"{name}.png")
    (path / "labels.csv").write_text("image,label,method\n" + "".join(f"{n},{label},{m}\n" for n, label, m in rows))
    return path


def test_by_folder_gives_one_row_per_folder_in_the_order_given(tmp_path, capsys):
    dcgan = generated_folder(tmp_path / "dcgan", [("a", "nevus", "synthesize"), ("b", "melanoma", "synthesize")], 10)
    vae = generated_folder(tmp_path / "vae", [("c", "nevus", "synthesize")], 200)
    out = tmp_path / "sheet.png"
    code, stdout, _ = run(["preview", vae, dcgan, "--out", out, "--by", "folder", "--per-row", 2, "--size", 8, "--json"],
                          capsys)
    assert code == 0
    assert list(json.loads(stdout)["rows"].items()) == [("vae", 1), ("dcgan", 2)]
    with Image.open(out) as sheet:
        assert sheet.size == (2 * 8, 2 * (8 + 14)) and sheet.text["Software"] == SOFTWARE
        pixels = np.asarray(sheet.convert("RGB"))
    assert (pixels[14:22, 0:8] == 200).all()  # first row: the vae folder's grey
    assert (pixels[22 + 14:22 + 22, 0:16] == 10).all()  # second row: both dcgan images


def test_by_folder_and_label_and_folders_that_share_a_name(tmp_path, capsys):
    first = generated_folder(tmp_path / "one" / "synth", [("a", "nevus", "mix"), ("b", "melanoma", "mix")], 10)
    second = generated_folder(tmp_path / "two" / "synth", [("c", "nevus", "mix")], 20)
    code, stdout, _ = run(["preview", first, second, "--out", tmp_path / "sheet.png", "--by", "folder,label", "--json"],
                          capsys)
    assert code == 0
    assert list(json.loads(stdout)["rows"]) == [f"{first} / melanoma", f"{first} / nevus", f"{second} / nevus"]


def test_out_never_replaces_an_input_file_even_with_overwrite(tmp_path, capsys):
    folder = generated_folder(tmp_path / "aug", [("a", "nevus", "mix")], 10)
    before = (folder / "labels.csv").read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run(["preview", folder, "--out", folder / "labels.csv", *extra], capsys)
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert (folder / "labels.csv").read_bytes() == before
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(photo)
    photo_bytes = photo.read_bytes()
    code, _, err = run(["preview", folder, "--out", photo, "--overwrite"], capsys)
    assert code == 1 and "is not one" in err and photo.read_bytes() == photo_bytes  # a PNG, but not a contact sheet


def test_an_earlier_sheet_is_replaced_only_with_overwrite(tmp_path, capsys):
    folder = generated_folder(tmp_path / "aug", [("a", "nevus", "mix"), ("b", "melanoma", "mix")], 10)
    out = tmp_path / "sheet.png"
    assert run(["preview", folder, "--out", out, "--size", 8], capsys)[0] == 0
    assert is_contact_sheet(out) and not is_contact_sheet(folder / "images" / "a.png")
    code, _, err = run(["preview", folder, "--out", out, "--size", 16], capsys)
    assert code == 1 and "--overwrite" in err
    with Image.open(out) as sheet:
        assert sheet.size == (8 * 8, 8 + 14)
    assert run(["preview", folder, "--out", out, "--size", 16, "--by", "label", "--overwrite"], capsys)[0] == 0
    with Image.open(out) as sheet:
        assert sheet.size == (8 * 16, 2 * (16 + 14))


def test_an_unknown_row_key_is_a_usage_error(tmp_path, capsys):
    folder = generated_folder(tmp_path / "aug", [("a", "nevus", "mix")], 10)
    for by in ("colour", "label,label", ""):
        code, _, err = run(["preview", folder, "--out", tmp_path / "sheet.png", "--by", by], capsys)
        assert code == 2 and "--by" in err, (by, err)
    assert not (tmp_path / "sheet.png").exists()


def test_a_folder_out_a_sheet_among_the_images_and_a_folder_given_twice_are_usage_errors(tmp_path, capsys):
    folder = generated_folder(tmp_path / "aug", [("a", "nevus", "mix")], 10)
    cases = {
        "is a folder": [folder, "--out", tmp_path],
        "is inside": [folder, "--out", folder / "images" / "sheet.png"],
        "is given twice": [folder, tmp_path / "." / "aug", "--out", tmp_path / "sheet.png"],
    }
    for message, args in cases.items():
        code, _, err = run(["preview", *args], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["a.png"] and not (tmp_path / "sheet.png").exists()
    assert run(["preview", folder, "--out", folder / "sheet.png"], capsys)[0] == 0  # beside images/ is fine
