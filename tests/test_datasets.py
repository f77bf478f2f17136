"""skinaug.GeneratedDataset numbered as torchvision's datasets are (classes, class_to_idx, targets, classes=), the
refusal to concatenate datasets that number their classes differently, and what a transform receives."""

import numpy as np
import pytest
from PIL import Image

import skinaug
from skinaug.cli import main
from skinaug.errors import SkinaugError

MODEL_CLASSES = ["bkl", "melanoma", "nevus"]


@pytest.fixture(scope="module")
def nevus_only(generator_model, tmp_path_factory):
    """A generated folder holding nevi alone, from the three-class tiny model."""
    out = tmp_path_factory.mktemp("nevus") / "synth"
    assert main(["synthesize", "--model", str(generator_model["model"]), "--out", str(out), "--class", "nevus", "-n", "3",
                 "--device", "cpu", "--quiet"]) == 0
    return out


def two_class_subset(data, tmp_path):
    """The tiny real data less its bkl images: labels melanoma and nevus only."""
    csv = tmp_path / "no-bkl.csv"
    csv.write_text("image,label\n" + "".join(f"{n},{l}\n" for n, l in zip(data.names, data.labels) if l != "bkl"))
    return csv


def test_a_generated_folder_numbers_its_classes_by_its_model_not_by_what_it_holds(nevus_only):
    generated = skinaug.GeneratedDataset(nevus_only)
    assert generated.classes == MODEL_CLASSES and generated.class_names == MODEL_CLASSES
    assert generated.class_to_idx == {"bkl": 0, "melanoma": 1, "nevus": 2}
    assert generated.targets == [2, 2, 2] and [generated[i][1] for i in range(3)] == [2, 2, 2]


def test_real_and_generated_concatenate_with_one_numbering(generator_model, nevus_only):
    import torch

    data = generator_model["data"]
    real = skinaug.GeneratedDataset(data.images, data.labels_csv, image_size=32)
    generated = skinaug.GeneratedDataset(nevus_only)
    both = skinaug.ConcatDataset([real, generated])
    assert both.classes == MODEL_CLASSES and both.class_to_idx["nevus"] == 2
    assert both.targets == [MODEL_CLASSES.index(label) for label in data.labels] + [2, 2, 2]
    _, labels = next(iter(torch.utils.data.DataLoader(both, batch_size=15)))
    assert labels.tolist() == both.targets
    assert (real + generated).targets == both.targets


def test_datasets_that_number_classes_differently_are_refused_until_classes_agree(generator_model, nevus_only, tmp_path):
    data = generator_model["data"]
    labels = two_class_subset(data, tmp_path)
    real = skinaug.GeneratedDataset(data.images, labels, image_size=32)
    assert real.classes == ["melanoma", "nevus"] and real.class_to_idx["nevus"] == 1  # sorted, as ImageFolder
    generated = skinaug.GeneratedDataset(nevus_only)
    with pytest.raises(SkinaugError, match=r"numbers its classes \['bkl', 'melanoma', 'nevus'\], dataset 0 \['melanoma', 'nevus'\]"):
        skinaug.ConcatDataset([real, generated])
    with pytest.raises(SkinaugError, match="numbers its classes"):
        real + generated  # noqa: B018
    with pytest.raises(SkinaugError, match="has no classes and targets"):
        skinaug.ConcatDataset([real, [(0, 0)]])
    fixed = skinaug.GeneratedDataset(data.images, labels, image_size=32, classes=generated.classes)
    assert set(fixed.targets) == {1, 2}
    assert skinaug.ConcatDataset([fixed, generated]).targets[-3:] == [2, 2, 2]


def test_classes_fixes_the_numbering_and_refuses_a_label_outside_it(nevus_only):
    reordered = skinaug.GeneratedDataset(nevus_only, classes=["nevus", "melanoma", "bkl"])
    assert reordered.targets == [0, 0, 0] and reordered.class_to_idx == {"nevus": 0, "melanoma": 1, "bkl": 2}
    # a label outside `classes` is left out with a count (refused under strict): with none left, that is an error
    with pytest.raises(SkinaugError, match=r"no label is among the classes \['bkl', 'melanoma'\]: nevus"):
        skinaug.GeneratedDataset(nevus_only, classes=["bkl", "melanoma"])


def test_a_transform_receives_a_pil_image_and_the_target_transform_the_index(nevus_only):
    seen = []

    def transform(image):
        seen.append(image)
        return np.asarray(image)

    dataset = skinaug.GeneratedDataset(nevus_only, transform=transform, target_transform=lambda t: f"class {t}")
    array, target = dataset[0]
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB" and seen[0].size == (32, 32)
    np.testing.assert_array_equal(array, np.asarray(Image.open(dataset.info(0)["path"]).convert("RGB")))
    assert target == "class 2"


def test_an_albumentations_pipeline_is_called_with_image_as_hwc_uint8(nevus_only):
    import albumentations as A

    seen = []

    def record(image, **_):
        seen.append(image)
        return image

    pipeline = A.Compose([A.Lambda(image=record), A.HorizontalFlip(p=1.0)])
    dataset = skinaug.GeneratedDataset(nevus_only, transform=pipeline)
    image, target = dataset[1]
    assert seen[0].dtype == np.uint8 and seen[0].shape == (32, 32, 3) and target == 2
    original = np.asarray(Image.open(dataset.info(1)["path"]).convert("RGB"))
    np.testing.assert_array_equal(image, original[:, ::-1])
    flipped, _ = skinaug.GeneratedDataset(nevus_only, transform=A.HorizontalFlip(p=1.0))[1]  # a single transform too
    np.testing.assert_array_equal(flipped, original[:, ::-1])


def test_the_onnx_only_concatenation_gives_the_items_in_order_as_torch_does():
    import torch.utils.data

    from skinaug.api import _PlainConcat

    parts = [["a", "b"], [], ["c"], ["d", "e"]]
    plain, torch_concat = _PlainConcat(parts), torch.utils.data.ConcatDataset(parts)
    assert len(plain) == len(torch_concat) == 5
    assert [plain[i] for i in range(5)] == [torch_concat[i] for i in range(5)] == ["a", "b", "c", "d", "e"]
    assert plain[-1] == "e" and plain[-5] == "a"
    for index in (5, -6):
        with pytest.raises(IndexError):
            plain[index]
