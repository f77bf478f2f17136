"""The priors' step matmuls alone, on one thread: oneDNN-packed (`StepMatmul(packed=True)`) against `torch.addmm`
(MKL), and onnxruntime's MatMul (MLAS), in GFLOP/s at the shapes the 64px and 128px priors' sampling steps use.

    python benchmarks/step_matmul.py
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/step_matmul.py
    LD_PRELOAD=/tmp/cpuid_avx2.so python benchmarks/step_matmul.py   # cc -O2 -shared -fPIC benchmarks/cpuid_avx2.c

The second line caps torch's libraries at AVX2; onnxruntime has no such switch, the third (the CPUID trap of
benchmarks/cpuid_avx2.c) hides AVX-512 from every library. The two torch arms alternate within one process, so their
ratio holds up under other load. Shapes: (rows, in, out) = (batch x positions of a step, taps x channels, outputs);
320x1664x256 is a bottom-prior wavefront step at batch 64 (5 positions, 13 taps of 128 channels, a gated conv),
512x1280x256 a top-prior row of above taps, 64x384x256 a single-position step's left taps. Prints one JSON line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from _common import print_json

# benchmarks/onnx.py would shadow the onnx package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

SHAPES = [(320, 1664, 256), (320, 1664, 128), (512, 1280, 256), (1280, 1664, 256), (64, 384, 256), (64, 256, 384),
          (320, 128, 256), (4, 1664, 256)]


def best_seconds(fn, flops: int, rounds: int = 7) -> float:
    reps = max(3, int(2e8 / flops))
    best = float("inf")
    for _ in range(rounds):
        fn()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - started) / reps)
    return best


def onnx_matmul(weight, x):
    try:
        import numpy as np
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rows, (inner, out) = x.shape[0], weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "step",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, out])],
                              [numpy_helper.from_array(weight.numpy(), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.ascontiguousarray(x.numpy())}
    return lambda: session.run(None, feed)


def main() -> None:
    from skinaug.priors.cache import StepMatmul

    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}
    for rows, inner, out in SHAPES:
        x, weight = torch.randn(rows, inner), torch.randn(inner, out) / inner**0.5
        add = torch.randn(rows, out)
        packed, plain = StepMatmul(weight, packed=True), StepMatmul(weight)
        flops = 2 * rows * inner * out
        seconds = {"packed": float("inf"), "addmm": float("inf")}
        for round_ in range(4):  # alternate, so that load falls on both alike
            for name, matmul in ((("packed", packed), ("addmm", plain)) if round_ % 2 else
                                 (("addmm", plain), ("packed", packed))):
                seconds[name] = min(seconds[name], best_seconds(lambda: matmul(x, add), flops, rounds=3))
        entry = {name: round(flops / s / 1e9, 1) for name, s in seconds.items()}
        entry["packed_over_addmm"] = round(seconds["addmm"] / seconds["packed"], 2)
        if packed.packed is None:
            entry["packed"] = None
        run = onnx_matmul(weight, x)
        if run is not None:
            entry["onnxruntime"] = round(flops / best_seconds(run, flops) / 1e9, 1)
        results[f"{rows}x{inner}x{out}"] = entry
    print_json({"benchmark": "step_matmul", "gflops_one_thread": results,
                "aten_capability": torch.backends.cpu.get_cpu_capability(),
                "caps": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                        "MKL_ENABLE_INSTRUCTIONS", "LD_PRELOAD")},
                "loadavg": os.getloadavg()})


if __name__ == "__main__":
    main()
