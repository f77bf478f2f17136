"""Label vocabularies: the public datasets' class names mapped onto a model's, and the user's own `--class-map`.

HAM10000's metadata says `mel` and `nv`, ISIC 2019's one-hot ground truth `MEL`, `AK`, ISIC 2020's `diagnosis`
column `seborrheic keratosis` or `lentigo NOS`, where the shipped model's classes are akiec, bcc, bkl, df, melanoma,
nevus, vasc. `STANDARD_LABELS` maps them, once for the whole package (README's "Label vocabularies" table is
checked against it by the tests). It applies only where a label is read against a model's classes
(`scan_dataset(class_names=...)`), and only to a label that is not a class of that model already.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class StandardLabel:
    label: str  # as the dataset writes it (matched ignoring case and repeated spaces)
    source: str  # the datasets that use it
    class_name: str | None  # skinaug's (the shipped model's) class; None: no class, the row is skipped
    why: str  # the reason for the choice, as the README's table states it


STANDARD_LABELS = (
    StandardLabel("mel", "HAM10000 `dx`, ISIC 2019 `MEL`", "melanoma", "the same diagnosis"),
    StandardLabel("nv", "HAM10000 `dx`, ISIC 2019 `NV`", "nevus", "the same diagnosis"),
    StandardLabel("bcc", "ISIC 2019 `BCC`", "bcc", "the same diagnosis"),
    StandardLabel("ak", "ISIC 2019 `AK`", "akiec",
                  "actinic keratosis; HAM10000's akiec is actinic keratoses and Bowen's disease, the standard match"),
    StandardLabel("akiec", "ISIC 2018 `AKIEC`", "akiec", "the same class"),
    StandardLabel("bkl", "ISIC 2019 `BKL`", "bkl", "the same class"),
    StandardLabel("df", "ISIC 2019 `DF`", "df", "the same diagnosis"),
    StandardLabel("vasc", "ISIC 2019 `VASC`", "vasc", "the same class"),
    StandardLabel("scc", "ISIC 2019 `SCC`", None,
                  "squamous cell carcinoma: akiec holds only its in-situ form (Bowen's), so no class"),
    StandardLabel("unk", "ISIC 2019 `UNK`", None, "no diagnosis"),
    StandardLabel("melanoma", "ISIC 2020 `diagnosis`", "melanoma", "the same diagnosis"),
    StandardLabel("nevus", "ISIC 2020 `diagnosis`", "nevus", "the same diagnosis"),
    StandardLabel("seborrheic keratosis", "ISIC 2020 `diagnosis`", "bkl",
                  "HAM10000's bkl is seborrheic keratoses, solar lentigines and lichen-planus like keratoses"),
    StandardLabel("solar lentigo", "ISIC 2020 `diagnosis`", "bkl", "a solar lentigo is bkl in HAM10000"),
    StandardLabel("lentigo NOS", "ISIC 2020 `diagnosis`", "bkl", "a lentigo not otherwise specified: as solar lentigo"),
    StandardLabel("lichenoid keratosis", "ISIC 2020 `diagnosis`", "bkl", "lichen-planus like keratosis is bkl in HAM10000"),
    StandardLabel("cafe-au-lait macule", "ISIC 2020 `diagnosis`", None, "not a HAM10000 class: no class"),
    StandardLabel("atypical melanocytic proliferation", "ISIC 2020 `diagnosis`", None,
                  "neither a nevus nor a melanoma: no class"),
    StandardLabel("unknown", "ISIC 2020 `diagnosis`", None, "no diagnosis"),
)

NOT_A_CLASS = "class not in the model"  # the reason a skipped row is counted under
# labels that say no diagnosis was made: never a class, not even a new one when fine-tuning
NO_DIAGNOSIS = frozenset(entry.label for entry in STANDARD_LABELS if entry.why == "no diagnosis")


def _key(label: str) -> str:
    return " ".join(label.split()).lower()


_STANDARD = {_key(entry.label): entry.class_name for entry in STANDARD_LABELS}


def standard_class(label: str) -> tuple[bool, str | None]:
    """(known, class): whether the label is in the table, and the class it maps to (None: no class)."""
    key = _key(label)
    return key in _STANDARD, _STANDARD.get(key)


# ------------------------------------------------------------------------------------------- --class-map


def parse_class_map(value: str) -> dict[str, str]:
    """`--class-map`: a file (JSON object, or one `name=class` or `name,class` a line, `#` comments) or inline
    `a=b,c=d`. Names match ignoring case and repeated spaces."""
    path = Path(value).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8-sig")
        if text.lstrip().startswith("{"):
            try:
                pairs = json.loads(text)
            except json.JSONDecodeError as error:
                raise UsageError(f"{{class_map}} {path} is not valid JSON: {error}") from None
            if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
                raise UsageError(f"{{class_map}} {path} must hold one JSON object of names to class names")
            items = list(pairs.items())
        else:
            lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
            items = [_pair(line, f"{path}: ") for line in lines if line]
    elif "=" in value:
        items = [_pair(part, "") for part in value.split(",") if part.strip()]
    else:
        raise UsageError(f"{{class_map}} {value!r} is neither a file nor name=class pairs such as mel=melanoma,nv=nevus")
    mapping = {_key(name): target.strip() for name, target in items}
    if not mapping or not all(mapping) or not all(mapping.values()):
        raise UsageError(f"{{class_map}} {value!r} must map names to class names, e.g. mel=melanoma")
    return mapping


def _pair(text: str, where: str) -> tuple[str, str]:
    separator = "=" if "=" in text else ","
    name, _, target = text.partition(separator)
    if not _ or not name.strip() or not target.strip():
        raise UsageError(f"{{class_map}} {where}{text!r} is not name=class")
    return name.strip(), target.strip()


_chosen: ContextVar[dict[str, str] | None] = ContextVar("skinaug_class_map", default=None)


@contextlib.contextmanager
def using_class_map(mapping: dict[str, str] | None):
    """Every label read inside the block goes through `mapping` (as `--class-map` does for a command)."""
    token = _chosen.set(mapping)
    try:
        yield
    finally:
        _chosen.reset(token)


def choose_class_map(mapping: dict[str, str] | None) -> None:
    """Sets the mapping for the rest of the running command (the CLI's option; `skinaug.cli.main` scopes it)."""
    _chosen.set(mapping)


def chosen_class_map() -> dict[str, str]:
    return _chosen.get() or {}


# ------------------------------------------------------------------------------------------- applying them


@dataclass
class Relabelled:
    entries: list  # (file, label, group) with labels among the classes (or as written, without classes)
    mapped: Counter  # (label as written, class) -> rows
    unknown: list  # (file, label as written): labels the classes do not hold


def relabel(entries: list, class_names, class_map: dict[str, str], onto=None) -> Relabelled:
    """Each entry's label through `class_map` (always), then, against a model's `class_names`, through the
    standard table when it is not one of them already; what then is no class of the model is `unknown`.
    `onto` (a fine-tuning source's classes, without `class_names`): the table maps labels onto those names where it
    can, every other label stays as written, a new class, except the table's "no diagnosis" labels (UNK, unknown),
    which are `unknown`: a class of images nobody diagnosed would teach nothing."""
    result = Relabelled([], Counter(), [])
    class_map = {_key(name): target for name, target in class_map.items()}
    classes = set(class_names) if class_names is not None else None
    towards = classes if classes is not None else (set(onto) if onto is not None else None)
    for file, label, group in entries:
        written, target = label, label
        if label is not None and _key(label) in class_map:
            target = class_map[_key(label)]
        elif label is not None and towards is not None and label not in towards:
            if classes is None and _key(label) in NO_DIAGNOSIS:
                result.unknown.append((file, written))
                continue
            standard = standard_class(label)[1]
            target = standard if classes is not None or standard in towards else label
        if label is not None and classes is not None and target not in classes:
            result.unknown.append((file, written))
            continue
        if target != written:
            result.mapped[(written, target)] += 1
        result.entries.append((file, target, group))
    return result
