"""PyTorch's side of `resnet bench`: the same architecture, batch sizes, input size, thread
count, warm-up and median, so the two can be compared on one machine.

    tools/reference/setup.sh   # once: torch + torchvision in tools/reference/.venv
    tools/reference/.venv/bin/python tools/bench/pytorch_bench.py --arch resnet50 --batch 1,16 --threads 2 [--channels-last] [--bf16] [--json]

--bf16 runs under torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN's AVX512-BF16 kernels
where the CPU has them), PyTorch's own mixed-precision inference.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--input", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = torchvision.models.get_model(a.arch, weights=None).eval()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    for b in [int(v) for v in a.batch.split(",")]:
        x = torch.randn(b, 3, a.input, a.input).to(memory_format=fmt)
        times = []
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
        with torch.inference_mode(), autocast:
            for _ in range(a.warmup):
                model(x)
            for _ in range(a.iters):
                t = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(times)
        r = {"impl": "pytorch" + ("-bf16" if a.bf16 else "") + ("-channels_last" if a.channels_last else ""), "torch": torch.__version__,
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
