"""The label files people have: HAM10000 `dx`, ISIC 2019 one-hot and ISIC 2020 `diagnosis` CSVs read against the
shipped model's classes, `--class-map` (file and inline), classes a model does not know skipped or refused."""

import json
import logging
import re
from pathlib import Path

import h5py
import pytest

from skinaug.data.class_map import STANDARD_LABELS, parse_class_map, using_class_map
from skinaug.cli import main
from skinaug.data.scan import scan_dataset
from skinaug.errors import SkinaugError, UsageError
from tests.test_data import by_name, make_images, write_csv

SHIPPED_CLASSES = ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]
README = Path(__file__).resolve().parents[1] / "README.md"


def _mapping_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "labels mapped" in record.getMessage()]


def test_ham10000_dx_codes_read_against_the_shipped_classes(tmp_path, caplog):
    make_images(tmp_path / "img", ["ISIC_1.jpg", "ISIC_2.jpg", "ISIC_3.jpg", "ISIC_4.jpg"])
    csv = write_csv(tmp_path / "HAM10000_metadata.csv", "lesion_id,image_id,dx,dx_type,age",
                    "HAM_1,ISIC_1,mel,histo,80", "HAM_1,ISIC_2,mel,histo,80", "HAM_2,ISIC_3,nv,follow_up,45",
                    "HAM_3,ISIC_4,bkl,histo,60")
    with caplog.at_level(logging.INFO, logger="skinaug"):
        dataset = scan_dataset(tmp_path / "img", csv, class_names=SHIPPED_CLASSES)
    assert dataset.dialect == "ham10000" and dataset.class_names == SHIPPED_CLASSES
    assert by_name(dataset) == {"ISIC_1": ("melanoma", "HAM_1"), "ISIC_2": ("melanoma", "HAM_1"),
                                "ISIC_3": ("nevus", "HAM_2"), "ISIC_4": ("bkl", "HAM_3")}
    assert _mapping_lines(caplog) == ["labels mapped to the classes: mel -> melanoma (2), nv -> nevus (1)"]


def test_isic2019_one_hot_maps_ak_and_skips_scc_and_unk_with_a_count(tmp_path, caplog):
    make_images(tmp_path / "img", [f"ISIC_{i}.jpg" for i in range(6)])
    csv = write_csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK",
                    "ISIC_0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "ISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
                    "ISIC_2,0.0,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0", "ISIC_3,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0",
                    "ISIC_4,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0", "ISIC_5,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0")
    with caplog.at_level(logging.INFO, logger="skinaug"):
        dataset = scan_dataset(tmp_path / "img", csv, class_names=SHIPPED_CLASSES)
    assert dataset.dialect == "isic2019"
    assert by_name(dataset) == {"ISIC_0": ("melanoma", ""), "ISIC_1": ("nevus", ""), "ISIC_2": ("akiec", ""),
                                "ISIC_3": ("vasc", "")}
    assert dataset.skipped == [("ISIC_4.jpg", "class not in the model: SCC"), ("ISIC_5.jpg", "class not in the model: UNK")]
    assert _mapping_lines(caplog) == [
        "labels mapped to the classes: AK -> akiec (1), MEL -> melanoma (1), NV -> nevus (1), VASC -> vasc (1)"]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 inputs of" in warning and "class not in the model: 2 (ISIC_4.jpg, ISIC_5.jpg)" in warning


ISIC2020_ROWS = [("ISIC_a", "melanoma", "melanoma"), ("ISIC_b", "nevus", "nevus"), ("ISIC_c", "seborrheic keratosis", "bkl"),
                 ("ISIC_d", "lentigo NOS", "bkl"), ("ISIC_e", "solar lentigo", "bkl"), ("ISIC_f", "lichenoid keratosis", "bkl"),
                 ("ISIC_g", "cafe-au-lait macule", None), ("ISIC_h", "atypical melanocytic proliferation", None),
                 ("ISIC_i", "unknown", None)]


def _isic2020(tmp_path: Path) -> tuple[Path, Path]:
    make_images(tmp_path / "img", [f"{name}.jpg" for name, _, _ in ISIC2020_ROWS])
    csv = write_csv(tmp_path / "ISIC_2020_Training_GroundTruth.csv",
                    "image_name,patient_id,sex,diagnosis,benign_malignant,target",
                    *[f"{name},IP_{i},male,{diagnosis},benign,0" for i, (name, diagnosis, _) in enumerate(ISIC2020_ROWS)])
    return tmp_path / "img", csv


def test_isic2020_diagnosis_maps_onto_bkl_and_skips_what_has_no_class(tmp_path, caplog):
    images, csv = _isic2020(tmp_path)
    with caplog.at_level(logging.INFO, logger="skinaug"):
        dataset = scan_dataset(images, csv, class_names=SHIPPED_CLASSES)
    assert dataset.dialect == "isic2020"
    assert {name: label for name, (label, _) in by_name(dataset).items()} == {
        name: cls for name, _, cls in ISIC2020_ROWS if cls is not None}
    assert [reason for _, reason in dataset.skipped] == [
        "class not in the model: cafe-au-lait macule", "class not in the model: atypical melanocytic proliferation",
        "class not in the model: unknown"]
    assert _mapping_lines(caplog) == ["labels mapped to the classes: lentigo NOS -> bkl (1), "
                                      "lichenoid keratosis -> bkl (1), seborrheic keratosis -> bkl (1), solar lentigo -> bkl (1)"]


def test_strict_refuses_labels_the_model_does_not_know(tmp_path):
    images, csv = _isic2020(tmp_path)
    with pytest.raises(SkinaugError, match=r"labels not among the classes \[.*\]: atypical melanocytic proliferation, "
                                           r"cafe-au-lait macule, unknown \(3 rows; without strict=True they are skipped"):
        scan_dataset(images, csv, class_names=SHIPPED_CLASSES, strict=True)


def test_without_a_model_labels_stay_as_written(tmp_path):
    images, csv = _isic2020(tmp_path)
    assert "lentigo NOS" in scan_dataset(images, csv).class_names


def test_class_map_inline_and_file_and_json(tmp_path):
    text = tmp_path / "map.txt"
    text.write_text("# mine\nLentigo   Maligna = melanoma\nbenign,nevus\n")
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"lentigo maligna": "melanoma", "benign": "nevus"}))
    expected = {"lentigo maligna": "melanoma", "benign": "nevus"}
    assert parse_class_map("lentigo maligna=melanoma, benign=nevus") == expected
    assert parse_class_map(str(text)) == expected and parse_class_map(str(as_json)) == expected
    for bad in ("melanoma", "a=", "=b", str(tmp_path / "missing.csv")):
        with pytest.raises(UsageError, match=r"^class_map "):
            parse_class_map(bad)


def test_a_class_map_applies_before_the_standard_table_and_without_a_model(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    csv = write_csv(tmp_path / "l.csv", "image,label", "a,LM", "b,mel", "c,benign")
    mapping = {"lm": "melanoma", "benign": "nevus"}
    dataset = scan_dataset(tmp_path / "img", csv, class_names=SHIPPED_CLASSES, class_map=mapping)
    assert {name: label for name, (label, _) in by_name(dataset).items()} == {"a": "melanoma", "b": "melanoma", "c": "nevus"}
    with using_class_map(mapping):  # as --class-map sets it for a command
        assert scan_dataset(tmp_path / "img", csv).class_names == ["mel", "melanoma", "nevus"]


def test_no_label_among_the_classes_says_so_in_one_line(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    csv = write_csv(tmp_path / "l.csv", "image,label", "a,benign", "b,malignant")
    with pytest.raises(SkinaugError, match=r"no label is among the classes .*: benign, malignant \(map them with"):
        scan_dataset(tmp_path / "img", csv, class_names=SHIPPED_CLASSES)


def _encode(args, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    code = main(["encode", *args, "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    with h5py.File(out, "r") as codes:
        names = [n.decode() for n in codes["image"][:]]
        classes = json.loads(codes.attrs["class_names"])
        return dict(zip(names, (classes[i] for i in codes["label"][:]))), err


def test_encode_with_the_shipped_model_reads_ham10000_and_reports_the_mapping(tmp_path, capsys):
    make_images(tmp_path / "img", ["ISIC_1.jpg", "ISIC_2.jpg", "ISIC_3.jpg"], size=(64, 64))
    csv = write_csv(tmp_path / "meta.csv", "lesion_id,image_id,dx", "H1,ISIC_1,mel", "H2,ISIC_2,nv", "H3,ISIC_3,df")
    labels, err = _encode([str(tmp_path / "img"), "--labels", str(csv)], tmp_path, capsys)
    assert labels == {"ISIC_1": "melanoma", "ISIC_2": "nevus", "ISIC_3": "df"}
    assert "labels mapped to the classes: mel -> melanoma (1), nv -> nevus (1)" in err


@pytest.mark.parametrize("as_file", [False, True])
def test_class_map_option_inline_and_file(tmp_path, capsys, as_file):
    make_images(tmp_path / "img", ["a.png", "b.png", "c.png"], size=(64, 64))
    csv = write_csv(tmp_path / "l.csv", "image,label", "a,LM", "b,Clark", "c,junk")
    mapping = "LM=melanoma,Clark=nevus"
    if as_file:
        (tmp_path / "map.txt").write_text(mapping.replace(",", "\n"))
        mapping = str(tmp_path / "map.txt")
    labels, err = _encode([str(tmp_path / "img"), "--labels", str(csv), "--class-map", mapping], tmp_path, capsys)
    assert labels == {"a": "melanoma", "b": "nevus"}
    assert "Clark -> nevus (1), LM -> melanoma (1)" in err
    assert re.search(r"1 inputs of .* left out: class not in the model: 1 \(c.png\)", err)
    assert main(["encode", str(tmp_path / "img"), "--labels", str(csv), "--class-map", mapping, "--strict",
                 "--out", str(tmp_path / "strict.h5")]) == 1
    assert "labels not among the classes" in capsys.readouterr().err


def test_a_bad_class_map_is_a_usage_error(tmp_path, capsys):
    make_images(tmp_path / "img", ["a.png"], size=(64, 64))
    assert main(["encode", str(tmp_path / "img"), "--class-map", "melanoma", "--out", str(tmp_path / "c.h5")]) == 2
    assert capsys.readouterr().err.startswith("error: --class-map 'melanoma' is neither a file nor name=class pairs")


def test_the_readme_table_is_the_code_table():
    text = README.read_text()
    table = text[text.index("| Label as written |"):].split("\n\n", 1)[0].splitlines()[2:]
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    assert rows == [[f"`{e.label}`", e.source, e.class_name or "(no class: skipped)", e.why] for e in STANDARD_LABELS]


def fine_tune(tmp_path, header: str, rows: list[str], out, *extra) -> int:
    """`train vqvae --init ham10000-64 --epochs 0` on six 64px images labelled by a CSV of `header` and `rows`."""
    make_images(tmp_path / "img", [f"ISIC_{i}.jpg" for i in range(6)], size=(64, 64))
    csv = write_csv(tmp_path / "meta.csv", header, *rows)
    return main(["train", "vqvae", str(tmp_path / "img"), "--labels", str(csv), "--init", "ham10000-64", "--epochs", "0",
                 "--out", str(out), "--device", "cpu", *extra])


def test_fine_tuning_maps_public_labels_onto_the_source_classes_and_keeps_new_ones(tmp_path, capsys):
    out = tmp_path / "mine"
    assert fine_tune(tmp_path, "lesion_id,image_id,dx",
                     [f"H{i},ISIC_{i},{('mel', 'nv', 'vitiligo')[i % 3]}" for i in range(6)], out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["melanoma", "nevus", "vitiligo"]  # vitiligo: a new class, as written
    assert "labels mapped to the classes: mel -> melanoma (2), nv -> nevus (2)" in capsys.readouterr().err


def test_fine_tuning_leaves_out_labels_that_say_no_diagnosis_instead_of_making_them_a_class(tmp_path, capsys):
    rows, out = [f"ISIC_{i},{('melanoma', 'unknown', 'UNK')[i % 3]}" for i in range(6)], tmp_path / "mine"
    assert fine_tune(tmp_path, "image_name,diagnosis", rows, out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["melanoma"] and config["training_data"]["images"] == 2
    assert fine_tune(tmp_path, "image_name,diagnosis", rows, tmp_path / "strict", "--strict") == 1
    assert "labels not among the classes" in capsys.readouterr().err
