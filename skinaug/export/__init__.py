"""Exporting a model directory: `onnx` (the graphs, the parity check against PyTorch, the atomic write; needs torch).
The onnxruntime side that reads the export is `skinaug.backends.onnx_runtime`."""
