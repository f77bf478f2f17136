"""Moved: the ONNX export is `skinaug.export.onnx` and the onnxruntime side `skinaug.backends.onnx_runtime`.

`skinaug.onnx.export` and `skinaug.onnx.runtime` still import (skinaug.moved, with a DeprecationWarning) and the
constants below are re-exported from their new home; import them from there."""

import warnings

from ..backends.onnx_runtime import EXPORT_FORMAT, ONNX_DIR, OPSET  # noqa: F401

warnings.warn("skinaug.onnx moved to skinaug.export.onnx (exporting) and skinaug.backends.onnx_runtime (running): "
              "import from there (the old name will be removed)", DeprecationWarning, stacklevel=2)
