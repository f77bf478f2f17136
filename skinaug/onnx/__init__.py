"""ONNX export of a model directory and an onnxruntime backend that needs neither PyTorch nor a GPU.

    skinaug export onnx --model MODEL_DIR          # writes MODEL_DIR/onnx/ and config.json["onnx"] (needs torch)
    skinaug export onnx --model MODEL_DIR --out DIR   # MODEL_DIR only read: DIR becomes a model dir (read-only models)
    skinaug encode DATA --model MODEL_DIR --out codes.h5 --backend onnx   # runs with onnxruntime alone

- `export.py` (imports torch): the graphs, the parity check against PyTorch, the atomic write.
- `runtime.py` (numpy + onnxruntime only): sessions and providers, and the VQ-VAE and the priors' samplers as the
  `skinaug.backends.base` interfaces (a code model, prior samplers); `skinaug.backends.onnx` makes them a backend
  that `skinaug.generate.Generator` drives.

Nothing in this package's runtime half imports torch, directly or through another skinaug module: a CI test runs
the commands in a process where `import torch` fails.
"""

ONNX_DIR = "onnx"
OPSET = 17
# the graphs' contract with runtime.py; 2: caches bound in place (IOBinding), row and embed graphs, wavefront steps
EXPORT_FORMAT = 2
