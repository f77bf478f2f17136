"""The Python API: a model to sample from in a notebook or training script, and any image folder as a Dataset.

    import skinaug

    model = skinaug.load_model()                           # the shipped default, a model directory or a shipped name
    melanomas = model.synthesize("melanoma", 16, seed=0)   # uint8 (16, 64, 64, 3)
    codes = model.encode(melanomas)                        # {"top": (16, 8, 8), "bottom": (16, 16, 16)} uint16
    same = model.decode(codes)                             # uint8 images again
    mixed = model.mix(melanomas[:8], melanomas[8:])        # the tops of the first, the bottoms of the second
    variants = model.resample(melanomas, "melanoma", seed=1)  # same tops, new bottoms drawn by the prior
    data = skinaug.GeneratedDataset("synth/")              # an OUT_DIR (or real DATA): (image, target) pairs
    both = skinaug.ConcatDataset([real, data])             # refused unless both number their classes alike

Images are uint8 arrays (N, S, S, 3) at the model's image size; codes are uint16 arrays per level. A model runs on
PyTorch, or where PyTorch is not installed on its ONNX export (`skinaug export onnx`) through onnxruntime. Sampling
is seeded as numpy and torch are: seed=None (the default) draws fresh randomness, an int or a numpy Generator gives
reproducible images; an int gives the same images as `skinaug synthesize --seed` with the same batch size and backend.
"""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path

import numpy as np

from .errors import SkinaugError, literal

__all__ = ["Model", "load_model", "GeneratedDataset", "ConcatDataset"]


class Model:
    """A model directory ready to encode, decode and generate; see the module docstring."""

    def __init__(self, path=None, device: str = "auto", batch_size: int = 64):
        from .generation.commands import open_generator
        from .storage.modeldir import resolve_model

        self.path = resolve_model(path)
        self._generator = open_generator(self.path, device)
        self.batch_size = batch_size

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in label-index order."""
        return list(self._generator.class_names)

    @property
    def image_size(self) -> int:
        """The side in pixels of the images the model encodes and generates."""
        return self._generator.spec.image_size

    @property
    def fingerprint(self) -> str:
        """The VQ-VAE's fingerprint, which code files and generated datasets record."""
        return self._generator.spec.fingerprint

    def __repr__(self) -> str:
        return f"skinaug.Model({str(self.path)!r}, {self.image_size}px, classes {self.class_names})"

    # ------------------------------------------------------------------ codes <-> images

    def encode(self, images) -> dict[str, np.ndarray]:
        """uint8 images (N, S, S, 3) at the model's size -> code maps per level (N, H, W) uint16."""
        images = self._check_images(images)
        parts = [self._generator.encode_images(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return {level: np.concatenate([p[level] for p in parts]) for level in self._generator.levels}

    def decode(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Code maps per level (N, H, W) -> uint8 images (N, S, S, 3)."""
        codes = self._check_codes(codes)
        n = len(codes[self._generator.levels[0]])
        parts = [self._generator.images_for({level: values[i : i + self.batch_size] for level, values in codes.items()})
                 for i in range(0, n, self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    # ------------------------------------------------------------------ generation

    def synthesize(self, label, n: int, *, temperature: float = 1.0, top_k: int | None = None, seed=None) -> np.ndarray:
        """n new images of one class: top codes from the top prior, bottom codes given them, decoded. `seed`: None
        draws fresh randomness (new images on every call); an int (the same images as `synthesize --seed`) or a
        numpy Generator gives reproducible ones."""
        from .generation.commands import Job

        if int(n) < 0:
            raise SkinaugError(f"n must be 0 or more, not {n}")
        index = self._label(label)
        self._generator.require(["synthesize"])
        return self._generate("synthesize", [Job("synthesize", index) for _ in range(int(n))], None, temperature, top_k, seed)

    def mix(self, top_images, bottom_images) -> np.ndarray:
        """Image i: the top codes of top_images[i] with the bottom codes of bottom_images[i] (two-level models)."""
        if "top" not in self._generator.levels:
            raise SkinaugError(f"mix needs a two-level model; {self.path} has one level")
        tops, bottoms = self.encode(top_images), self.encode(bottom_images)
        if len(tops["top"]) != len(bottoms["bottom"]):
            raise SkinaugError(f"mix pairs images one to one: {len(tops['top'])} top images, {len(bottoms['bottom'])} bottom images")
        return self.decode({"top": tops["top"], "bottom": bottoms["bottom"]})

    def resample(self, images, labels, *, temperature: float = 1.0, top_k: int | None = None, seed=None) -> np.ndarray:
        """Each image's top codes kept and its bottom codes drawn anew by the bottom prior, given them and the label
        (one class for all images, or one per image). `seed` as in `synthesize`."""
        from .storage.codefile import CodeFile
        from .generation.commands import plan_per_source

        codes = self.encode(images)
        n = len(codes["bottom"])
        names = [labels] * n if isinstance(labels, (str, int, np.integer)) else list(labels)
        if len(names) != n:
            raise SkinaugError(f"{len(names)} labels for {n} images")
        indices = np.array([self._label(name) for name in names], dtype=np.int64)
        self._generator.require(["resample"])
        source = CodeFile(Path("<memory>"), {}, codes, [f"image_{i}" for i in range(n)], indices, [""] * n)
        jobs = plan_per_source("resample", range(n), 1, source)
        return self._generate("resample", jobs, source, temperature, top_k, seed)

    def _generate(self, method: str, jobs, source, temperature: float, top_k: int | None, seed) -> np.ndarray:
        """The jobs' images, drawn with this call's settings (the generator keeps none of them)."""
        from .generation.commands import batch_seed, make_batch, make_batches
        from .generation.sampler import SamplingOptions

        sampling = SamplingOptions(temperature=temperature, top_k=top_k)
        seed = seed_value(seed)
        self._generator.check_classes(jobs)
        parts = [make_batch(self._generator, method, batch, source, batch_seed(seed, index), sampling)[1]
                 for index, (_, batch) in enumerate(make_batches(jobs, self.batch_size))]
        return np.concatenate(parts) if parts else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    # ------------------------------------------------------------------ checks

    def _label(self, label) -> int:
        names = self.class_names
        if isinstance(label, str):
            if label not in names:
                raise SkinaugError(f"class {label!r} is not one of this model's classes ({', '.join(names)})")
            return names.index(label)
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
            return int(label)
        raise SkinaugError(f"a label is a class name or an index below {len(names)}, not {label!r}")

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        size = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise SkinaugError(f"images must be uint8 (N, {size}, {size}, 3) for this model, not {images.dtype} "
                               f"{tuple(images.shape)} (skinaug.data.load_image(path, {size}) reads a file at that size)")
        return images

    def _check_codes(self, codes) -> dict[str, np.ndarray]:
        grid, codebook_size = self._generator.spec.grid, self._generator.spec.codebook_size
        if not isinstance(codes, dict) or set(codes) != set(grid):
            raise SkinaugError(f"codes must be a dict with the levels {', '.join(grid)}")
        checked = {}
        for level, (height, width) in grid.items():
            values = np.asarray(codes[level])
            if values.ndim != 3 or values.shape[1:] != (height, width):
                raise SkinaugError(f"{level} codes must be (N, {height}, {width}), not {tuple(values.shape)}")
            if values.size and (values.min() < 0 or values.max() >= codebook_size):
                raise SkinaugError(f"{level} codes must lie in [0, {codebook_size})")
            checked[level] = values
        if len({len(v) for v in checked.values()}) != 1:
            raise SkinaugError("every level needs the same number of code maps")
        return checked


def seed_value(seed) -> int:
    """The int seed the batches' seeds derive from, as numpy and torch read a seed: None draws one from fresh OS
    entropy, a numpy Generator gives its next draw (reproducible from its state), an int is itself."""
    if seed is None:
        seed = np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return int(seed)
    raise SkinaugError(f"seed must be None, a non-negative int or a numpy.random.Generator, not {seed!r}")


def load_model(path=None, device: str = "auto", batch_size: int = 64) -> Model:
    """A model directory (or a shipped model's name); None: `$SKINAUG_MODEL`, else the shipped default."""
    return Model(path, device=device, batch_size=batch_size)


def _dataset_base():
    """torch's Dataset where PyTorch is installed; without it (an onnx-only install) a plain class, so that a
    generated folder can still be read: `image(i)`, `info(i)`, and items through a `transform` of your own."""
    from .runtime import torch_installed

    if not torch_installed():
        return object
    from torch.utils.data import Dataset

    return Dataset


class GeneratedDataset(_dataset_base()):
    """A generated OUT_DIR (either layout, skinaug/layout.py) or a real image folder as a torch Dataset, numbered
    as torchvision's datasets are: `classes` (names in index order), `class_to_idx` and `targets` (each item's index).

    `classes` fixes the numbering, so that datasets concatenated for training agree on it: by default the generating
    model's class list where the folder has one (a generated OUT_DIR records it), else the sorted labels found (as
    torchvision's ImageFolder numbers its folders). Images whose label is outside `classes` are left out with a
    count (an error when no image is left).

    Item i is (image, target). Without `transform` the image is a float32 tensor (3, S, S) in [0, 1]. A
    `transform` receives what its library expects: an albumentations transform or Compose is called as
    `transform(image=array)` with the HWC uint8 RGB array (S, S, 3), and its "image" is the item's image; any other
    callable (torchvision's transforms) receives a PIL RGB image of S x S. `target_transform` receives the target:
    the label's index in `classes`, -1 for an unlabelled image. `info(i)` gives the image's name, label, method and
    sources (`method` is "real" for real images), so a training script can mix real and generated images and keep
    track. `real + generated` (or `skinaug.ConcatDataset([...])`) concatenates datasets after checking that they
    number their classes alike. `image(i)` is the uint8 array (S, S, 3); it, `info`, and items with a `transform`
    need no PyTorch.

    S is `image_size` for every item: each image is read at that side (EXIF-rotated, RGB, the shorter side scaled
    with LANCZOS, centre-cropped), real and generated alike. Without it, S is the folder's one size: the one its
    run.json records (an OUT_DIR written at one size, as `augment` writes by default), else the one its files
    have (the shorter side when they are not square); a folder whose files differ in size is refused, naming the
    sizes found, since reading them at one side would resize some images and not others (a cue for "generated")."""

    def __init__(self, path, labels=None, *, classes=None, image_size: int | None = None, transform=None,
                 target_transform=None, **columns):
        from .data.layout import row_methods
        from .scores.sets import open_set

        if classes is None and labels is None:
            classes = _model_classes(Path(path))
        self.set = open_set(path, labels, class_names=None if classes is None else list(classes), **columns)
        self.samples = list(self.set.dataset.samples)
        self.classes = list(self.set.dataset.class_names)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.targets = [sample.label for sample in self.samples]
        # one side for every item, real or generated alike, so that a DataLoader can batch them
        self.image_size = image_size if image_size is not None else one_size(Path(path), self.samples, self.set.generated)
        self.transform = transform
        self.target_transform = target_transform
        self._methods = row_methods(Path(path) / "labels.csv") if self.set.generated and labels is None else {}

    @property
    def class_names(self) -> list[str]:
        """The class names in index order (the same list as `classes`)."""
        return self.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        pixels = self.image(index)
        if self.transform is None:
            import torch

            image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
        elif _is_albumentations(self.transform):
            image = self.transform(image=pixels)["image"]
        else:
            from PIL import Image

            image = self.transform(Image.fromarray(pixels))
        target = sample.label if self.target_transform is None else self.target_transform(sample.label)
        return image, target

    def image(self, index: int) -> np.ndarray:
        """Image i as uint8 (S, S, 3) at `image_size` (EXIF-rotated, RGB, resized and centre-cropped)."""
        from .data.scan import load_image

        return load_image(self.samples[index].path, self.image_size)

    def __add__(self, other):
        return ConcatDataset([self, other])

    def info(self, index: int) -> dict:
        sample = self.samples[index]
        sources = (self.set.sources or {}).get(sample.name, ())
        return {"image": sample.name, "path": str(sample.path),
                "label": self.classes[sample.label] if sample.label >= 0 else None,
                "method": self._methods.get(sample.name, "real"), "sources": list(sources), "group": sample.group}


def one_size(path: Path, samples, generated: bool) -> int | None:
    """The side every item of a folder is read at when no image_size= is given (see GeneratedDataset): run.json's
    recorded one, else the files' one size (read from their headers); an error naming the sizes when they differ."""
    from collections import Counter

    from PIL import Image

    from .data.layout import recorded_size

    if not samples:
        return None
    recorded = recorded_size(path) if generated and path.is_dir() else None
    if recorded is not None:
        return recorded
    sizes: Counter = Counter()
    for sample in samples:
        with Image.open(sample.path) as image:  # the header only: no pixel is decoded
            sizes[image.size] += 1
    if len(sizes) > 1:
        found = ", ".join(f"{count} of {width}x{height}" for (width, height), count in sizes.most_common(4))
        more = f" and {len(sizes) - 4} more sizes" if len(sizes) > 4 else ""
        raise SkinaugError(f"the images of {literal(path)} differ in size ({found}{more}): reading them at one side "
                           "would resize some and not others; give {image_size=S} to read every image at S x S, or "
                           "write the folder at one size (augment does unless it keeps its originals byte for byte)")
    (width, height), = sizes
    return min(width, height)


def _concat_base():
    """torch's ConcatDataset where PyTorch is installed, else `_PlainConcat` (as `_dataset_base` does)."""
    from .runtime import torch_installed

    if not torch_installed():
        return _PlainConcat
    from torch.utils.data import ConcatDataset as TorchConcat

    return TorchConcat


class _PlainConcat:
    """The datasets' items one after the other, for an onnx-only install (torch's ConcatDataset does the same)."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.cumulative_sizes = list(itertools.accumulate(len(dataset) for dataset in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1] if self.cumulative_sizes else 0

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} items")
        index %= len(self)
        which = bisect.bisect_right(self.cumulative_sizes, index)
        return self.datasets[which][index - (self.cumulative_sizes[which - 1] if which else 0)]


class ConcatDataset(_concat_base()):
    """torch's ConcatDataset of datasets that number their classes alike, with their `classes`, `class_to_idx`
    and `targets`; datasets whose class lists differ (or that have none to compare) are refused, since their
    concatenation would give one label number to different classes. Make them agree with GeneratedDataset's
    `classes=`."""

    def __init__(self, datasets):
        datasets = list(datasets)
        check_same_classes(datasets)
        super().__init__(datasets)
        self.classes = list(datasets[0].classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    @property
    def targets(self) -> list[int]:
        return [target for dataset in self.datasets for target in dataset.targets]

    def __add__(self, other):
        return ConcatDataset([self, other])


def check_same_classes(datasets) -> None:
    """Refuses datasets that number their classes differently (one clear line naming both lists)."""
    if not datasets:
        raise SkinaugError("ConcatDataset needs at least one dataset")
    for index, dataset in enumerate(datasets):
        if not isinstance(getattr(dataset, "classes", None), (list, tuple)) or not hasattr(dataset, "targets"):
            raise SkinaugError(f"dataset {index} ({type(dataset).__name__}) has no classes and targets to check its "
                               "label numbers against: give GeneratedDatasets (or datasets with both attributes)")
        if list(dataset.classes) != list(datasets[0].classes):
            raise SkinaugError(f"dataset {index} numbers its classes {list(dataset.classes)}, dataset 0 "
                               f"{list(datasets[0].classes)}: one label number would mean two classes; open both with "
                               f"the same classes=, e.g. GeneratedDataset(..., classes={list(datasets[0].classes)})")


def _is_albumentations(transform) -> bool:
    """An albumentations transform or Compose, known by its classes' module (without importing albumentations)."""
    return any(cls.__module__.split(".")[0] == "albumentations" for cls in type(transform).__mro__)


def _model_classes(path: Path) -> list[str] | None:
    """The class list of the model that generated the OUT_DIR `path` (run.json records it; earlier folders'
    codes.h5 holds it), or None for a real image folder or a folder that does not say."""
    import json

    from .data.layout import is_generated_folder

    if not path.is_dir() or not is_generated_folder(path):
        return None
    try:
        names = json.loads((path / "run.json").read_text(encoding="utf-8")).get("class_names")
    except (OSError, ValueError, AttributeError):
        names = None
    if names is None and (path / "codes.h5").is_file():
        import h5py

        with h5py.File(path / "codes.h5", "r") as handle:
            names = json.loads(handle.attrs.get("class_names", "null"))
    return list(names) if isinstance(names, list) and all(isinstance(name, str) for name in names) else None

