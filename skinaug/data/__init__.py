"""Reading image datasets: `scan` (folders, CSV dialects, labels, decoding), `layout` (what a generated dataset is:
labels.csv's columns, the methods, the recogniser and reader), `class_map` (relabelling) and `classic`
(albumentations copies). Torch-free.

`skinaug.data` was one module before the package was regrouped: its names (`scan_dataset`, `open_image`,
`is_generated_folder`, ...) stay importable from here; new code imports them from `skinaug.data.scan`."""

SUBMODULES = ('scan', 'layout', 'class_map', 'classic')


def __getattr__(name):
    """The names of the former module skinaug.data (now skinaug.data.scan), imported on first use so that importing one
    submodule does not import the others."""
    if name.startswith("__") or name in SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import scan

    try:
        return getattr(scan, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
