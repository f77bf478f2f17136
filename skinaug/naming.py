"""File names made from data: class names, source image names, names read from code files.

Such text comes from CSVs, code files and downloaded models, so it may hold anything ('../../x', 'a/b',
'CON', 300 characters). Every file skinaug names after data goes through `unique_names`, which turns each
text into one safe path component and keeps the names of one output apart. The text itself (labels.csv
'label', source columns) is kept as it is: only file names are changed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

# Bytes of one name before its extension: leaves room for '.png', the '.<name>.<random>.tmp' of atomic
# writes and the prefixes and counters of generated names within the 255-byte limit of most file systems.
MAX_NAME_BYTES = 100
DIGEST_CHARS = 8

# Path separators, NUL and control characters, and what Windows forbids in a name. A run of them, with
# the dots and spaces around it, becomes one '_' so that '../../x' reads '_x' rather than '.._.._x'.
_UNSAFE_RUN = re.compile(r'[.\s]*(?:[\x00-\x1f\x7f/\\<>:"|?*][.\s]*)+')
# Names Windows reserves whatever their extension.
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of text within max_bytes of UTF-8, never cutting a character in two."""
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def safe_name(text: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """One path component for `text`: the text itself when it is already safe, else a cleaned form with a
    short hash of the original, so that 'a/b' ('a_b-1c2d3e4f') stays apart from a real 'a_b'."""
    cleaned = _UNSAFE_RUN.sub("_", unicodedata.normalize("NFC", text)).strip(" ").lstrip(".").rstrip(". ")
    if cleaned.split(".", 1)[0].upper() in _RESERVED:
        cleaned = "_" + cleaned
    if text and cleaned == text and len(text.encode("utf-8", "surrogatepass")) <= max_bytes:
        return text
    suffix = "-" + digest(text)
    return _truncate(cleaned or "name", max_bytes - len(suffix)) + suffix


def name_key(name: str) -> str:
    """Names that one file system may treat as the same file (macOS and Windows ignore case, macOS
    normalises Unicode) must differ in this key."""
    return unicodedata.normalize("NFC", name).casefold()


def unique_names(texts: Iterable[str], *, taken: Iterable[str] = (), max_bytes: int = MAX_NAME_BYTES) -> list[str]:
    """`safe_name` of each text, made unique (also against `taken`, and ignoring case) by a numbered hash
    suffix on the later of two colliding names. Deterministic: the same texts give the same names."""
    used = {name_key(name) for name in taken}
    names = []
    for text in texts:
        name = safe_name(text, max_bytes)
        attempt = 0
        while name_key(name) in used:
            attempt += 1
            suffix = f"-{digest(f'{attempt}:{text}')}"
            name = _truncate(safe_name(text, max_bytes), max_bytes - len(suffix)) + suffix
        used.add(name_key(name))
        names.append(name)
    return names
