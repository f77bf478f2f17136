"""Classic augmentation with albumentations: the baseline every generated image is judged against.

Flips, 90-degree turns, a small affine, colour and brightness, CLAHE, and mild blur or noise, as dermoscopy
pipelines use them (lesions have no orientation). A user's own pipeline comes from a file in albumentations'
serialisation (`A.save(pipeline, "pipeline.yaml", data_format="yaml")`); its output is resized to the model's side.
Draws are seeded: the same seed on the same images gives the same copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError


def default_transforms() -> list:
    import albumentations as A

    return [
        A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90(),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-20, 20), border_mode=2, p=0.7),
        A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.03, p=0.7),
        A.CLAHE(clip_limit=2.0, p=0.2),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.GaussNoise(std_range=(0.01, 0.04))], p=0.3),
    ]


def load_transforms(path) -> list:
    """A pipeline saved by albumentations (yaml or json, by the file's suffix): its transforms."""
    import albumentations as A

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{{classic_config}} {path} is not a file")
    data_format = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
    try:
        loaded = A.load(str(path), data_format=data_format)
    except Exception as error:  # albumentations raises many kinds on a bad file: all mean "not a pipeline"
        raise UsageError(f"{{classic_config}} {path} is not an albumentations pipeline ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
    return list(loaded.transforms)


def augment_images(images: np.ndarray, seed: int, transforms: list | None = None) -> np.ndarray:
    """Classically augmented copies of uint8 images (N, S, S, 3), at the same side, one draw each."""
    import albumentations as A

    size = images.shape[1]
    pipeline = A.Compose([*(transforms if transforms is not None else default_transforms()), A.Resize(size, size)], seed=seed)
    if not len(images):
        return images.copy()
    made = [pipeline(image=image)["image"] for image in images]
    bad = next((m for m in made if not (isinstance(m, np.ndarray) and m.dtype == np.uint8 and m.shape == images.shape[1:])), None)
    if bad is not None:  # e.g. Normalize (floats) or ToTensorV2 (a CHW tensor) at the end of a user's pipeline
        kind = f"{bad.dtype} {tuple(bad.shape)}" if hasattr(bad, "dtype") else type(bad).__name__
        raise UsageError(f"the classic pipeline must give uint8 images {images.shape[1:]}, not {kind}: leave out "
                         "Normalize, ToTensorV2 and other steps meant for a model's input")
    return np.stack(made)
