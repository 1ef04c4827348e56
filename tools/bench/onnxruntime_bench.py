"""ONNX Runtime's side of `resnet bench`: the torchvision model (weights=None, seeded, eval
mode) exported to ONNX once, then run by onnxruntime's CPU execution provider with the same
batch sizes, input size, thread count, warm-up and median as `resnet bench` and
tools/bench/pytorch_bench.py; prints the same JSON keys, so tools/bench/compare.py treats
all three alike.

The export (torch.onnx.export, dynamic batch axis, fixed H x W) runs in a child process and
is cached in tools/bench/.cache/, so the measured process never imports torch: its peak RSS
is onnxruntime + model + activations only.

    tools/reference/.venv/bin/pip install onnxruntime onnx onnxscript   # once (compare.sh --setup does it)
    tools/reference/.venv/bin/python tools/bench/onnxruntime_bench.py --arch resnet50 --batch 1,16 --threads 2 [--json]
    tools/reference/.venv/bin/python tools/bench/onnxruntime_bench.py --arch resnet50 --export-only   # prints the .onnx path
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")


def model_path(arch, size, opset):
    return os.path.join(CACHE, f"{arch}_{size}px_opset{opset}_dynbatch.onnx")


def export(arch, size, opset, path):
    """Runs in its own process (`--export-only`): torch is imported here only."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(2, 3, size, size)  # batch 2, not 1, so the exporter keeps the batch dim symbolic
    os.makedirs(CACHE, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with torch.no_grad():
        torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["logits"],
                          opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--input", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--export-only", action="store_true", help="export (if not cached) and print the .onnx path")
    ap.add_argument("--force-export", action="store_true", help="re-export even if cached")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    path = model_path(a.arch, a.input, a.opset)

    if a.export_only:
        if a.force_export or not os.path.exists(path):
            export(a.arch, a.input, a.opset, path)
        print(path)
        return
    if a.force_export or not os.path.exists(path):
        cmd = [sys.executable, os.path.abspath(__file__), "--export-only", "--arch", a.arch,
               "--input", str(a.input), "--opset", str(a.opset)] + (["--force-export"] if a.force_export else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for b in [int(v) for v in a.batch.split(",")]:
        x = rng.standard_normal((b, 3, a.input, a.input), dtype=np.float32)
        feed = {name: x}
        for _ in range(a.warmup):
            sess.run(None, feed)
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(times)
        r = {"impl": "onnxruntime", "onnxruntime": ort.__version__, "opset": a.opset,
             "arch": a.arch, "batch": b, "input": a.input, "threads": a.threads, "iters": a.iters,
             "latency_ms_median": med, "latency_ms_min": min(times), "images_per_sec_median": b * 1e3 / med,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if a.json:
            print(json.dumps(r))
        else:
            print(f"{r['impl']} {a.arch} batch {b:>3} @{a.input}px, {a.threads} threads: median {med:8.2f} ms "
                  f"(min {min(times):8.2f}), {r['images_per_sec_median']:7.2f} images/s, peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
