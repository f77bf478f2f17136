"""Reading image datasets: `scan` (folders, CSV dialects, labels, decoding), `layout` (what a generated dataset is:
labels.csv's columns, the methods, the recogniser and reader), `class_map` (relabelling) and `classic`
(albumentations copies). Torch-free.

`skinaug.data` was one module before the package was regrouped: its names (`scan_dataset`, `open_image`,
`is_generated_folder`, ...) stay importable from here; new code imports them from `skinaug.data.scan`."""

from ..moved import former_module

SUBMODULES = ('scan', 'layout', 'class_map', 'classic')
__getattr__ = former_module(__name__, "scan", SUBMODULES)  # skinaug.data's names, now in skinaug.data.scan
