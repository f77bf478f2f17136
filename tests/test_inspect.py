"""skinaug inspect: the numbers of the report on tiny images whose answers are known, the duplicates it must find,
and a report.html that carries its plots inside."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from skinaug.cli import main
from skinaug.reports.inspection import lightness, near_duplicate_pairs, perceptual_hash, saturation


def test_lightness_and_saturation_are_the_cielab_and_hsv_definitions():
    pixels = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [100, 50, 25]], dtype=np.uint8)
    assert lightness(pixels)[:3] == pytest.approx([0.0, 100.0, 53.585], abs=1e-3)  # L* of sRGB black, white, mid grey
    assert lightness(pixels)[3] == pytest.approx(53.2408, abs=1e-3)  # pure red, as colour tables give it
    assert saturation(pixels).tolist() == [0.0, 0.0, 0.0, 1.0, 0.75]


def test_perceptual_hash_ignores_brightness_and_sees_structure_and_pairs_are_hamming_distances():
    gray = np.random.default_rng(0).normal(128, 30, (32, 32))
    # a brightness shift moves only the constant term, whose bit stays set
    assert perceptual_hash(gray) == perceptual_hash(gray + 10) == perceptual_hash(gray + 40)
    flipped = bin(perceptual_hash(gray) ^ perceptual_hash(gray[::-1])).count("1")
    assert flipped >= 8  # the mirrored image is another image
    hashes = np.array([0, 0b1, 0b111, 2**64 - 1], dtype=np.uint64)
    assert near_duplicate_pairs(hashes, 1) == [(0, 1, 1)]
    assert near_duplicate_pairs(hashes, 3, chunk=2) == [(0, 1, 1), (0, 2, 3), (1, 2, 2)]


def make_noise_data(root):
    """Ten random-texture images in two classes, one lesion each, plus an exact copy and a slightly brightened copy
    of im_0 (other lesions), and one grey image (a saturation outlier)."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,label,lesion_id"]
    for i in range(10):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels[..., 0] = np.maximum(pixels[..., 0], 150)  # reddish: saturated
        Image.fromarray(pixels).resize((48, 48), Image.Resampling.NEAREST).save(images / f"im_{i}.png")
        rows.append(f"im_{i},{'melanoma' if i < 4 else 'nevus'},les_{i}")
    shutil.copyfile(images / "im_0.png", images / "copy_0.png")
    brighter = np.clip(np.asarray(Image.open(images / "im_0.png")).astype(int) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(images / "near_0.png")
    Image.new("RGB", (48, 48), (120, 120, 120)).save(images / "grey.png")
    rows += ["copy_0,melanoma,les_x", "near_0,melanoma,les_y", "grey,nevus,les_z"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_report_counts_classes_and_finds_duplicates_and_outliers(tmp_path, capsys):
    data = make_noise_data(tmp_path / "data")
    out = tmp_path / "report"
    assert main(["inspect", str(data / "images"), "--labels", str(data / "labels.csv"), "--out", str(out), "--z", "2.5",
                 "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 13 and report["classes"] == {"melanoma": {"images": 6, "lesions": 6},
                                                            "nevus": {"images": 7, "lesions": 7}}
    assert report["sizes"] == {"48x48": 13} and report["formats"] == {"PNG": 13} and report["modes"] == {"RGB": 13}
    dup = report["duplicates"]
    assert [sorted(g) for g in dup["exact_groups"]] == [["copy_0", "im_0"]] and dup["exact_images"] == 1
    assert [sorted(g) for g in dup["near_groups"]] == [["copy_0", "im_0", "near_0"]] and dup["near_images"] == 2
    assert dup["near_groups_across_lesions"] == 1
    assert [o["image"] for o in report["saturation"]["outliers"]] == ["grey"] and report["saturation"]["outliers"][0]["saturation"] == 0
    assert json.loads((out / "report.json").read_text())["duplicates"] == dup

    page = (out / "report.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from a network
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) >= 5
    import base64
    import io

    for data_uri in embedded:  # every embedded plot is a PNG that decodes
        assert Image.open(io.BytesIO(base64.b64decode(data_uri))).size[0] > 50
    assert {p.name for p in (out / "plots").iterdir()} >= {"classes.png", "rgb_histogram.png", "saturation.png",
                                                           "lightness.png", "saturation_outliers.png", "near_duplicates.png"}


def test_with_a_model_the_worst_reconstructions_come_first(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    out = tmp_path / "report"
    assert main(["inspect", str(data.images), "--labels", str(data.labels_csv), "--model", str(generator_model["model"]),
                 "--out", str(out), "--show", "5", "--device", "cpu", "--json", "--quiet"]) == 0
    worst = json.loads(capsys.readouterr().out)["reconstruction"]["worst"]
    assert len(worst) == 5 and [w["mse"] for w in worst] == sorted((w["mse"] for w in worst), reverse=True)
    assert (out / "plots" / "worst_reconstructions.png").is_file()


def test_an_existing_report_is_replaced_only_with_overwrite(tmp_path, capsys):
    data = make_noise_data(tmp_path / "data")
    out = tmp_path / "report"
    args = ["inspect", str(data / "images"), "--labels", str(data / "labels.csv"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert main(args) == 1 and "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


BROWSERS = [name for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)]


@pytest.mark.skipif(not BROWSERS, reason="no headless browser installed")
def test_a_headless_browser_renders_the_report_with_its_plots(tmp_path, capsys):
    data = make_noise_data(tmp_path / "data")
    out = tmp_path / "report"
    assert main(["inspect", str(data / "images"), "--labels", str(data / "labels.csv"), "--out", str(out), "--quiet"]) == 0
    result = subprocess.run([BROWSERS[0], "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", (out / "report.html").as_uri()],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.count("<figure>") >= 5 and result.stdout.count('src="data:image/png;base64,') >= 5


def test_inspect_refuses_decompression_bombs_like_every_reader(tmp_path, monkeypatch, capsys):
    import skinaug.data.scan

    data = make_noise_data(tmp_path / "data")
    monkeypatch.setattr(skinaug.data.scan, "MAX_IMAGE_PIXELS", 48 * 48 - 1)  # every 48x48 image is now "too large"
    Image.new("RGB", (16, 16), "red").save(data / "images" / "small.png")
    with open(data / "labels.csv", "a") as handle:
        handle.write("small,nevus,les_s\n")
    out = tmp_path / "report"
    assert main(["inspect", str(data / "images"), "--labels", str(data / "labels.csv"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and len(report["unreadable"]) == 13
    assert all(u["reason"].startswith("decompression bomb: 48x48") for u in report["unreadable"])
