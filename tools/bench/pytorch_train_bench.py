"""PyTorch's side of `resnet bench --train`: images/s of full training steps (forward,
cross-entropy, backward, SGD momentum step) at a fixed batch, median over timed steps
after warm-up, same threads as ours.

    tools/reference/.venv/bin/python tools/bench/pytorch_train_bench.py --arch resnet20 --batch 128 --input 32 --threads 2
    tools/reference/.venv/bin/python tools/bench/pytorch_train_bench.py --arch resnet50 --batch 16 --input 224 --threads 2
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reference"))
import cifar_resnet  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cifar = a.arch.startswith(("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain"))
    model = cifar_resnet.get_model(a.arch) if cifar else torchvision.models.get_model(a.arch)
    classes = 10 if cifar else 1000
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, a.input, a.input).to(memory_format=fmt)
    y = torch.randint(0, classes, (a.batch,))
    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    r = {"impl": "pytorch" + ("-channels_last" if a.channels_last else ""), "torch": torch.__version__, "arch": a.arch,
         "batch": a.batch, "input": a.input, "threads": a.threads, "step_ms_median": med * 1e3,
         "train_images_per_sec_median": a.batch / med,
         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(r) if a.json else
          f"{r['impl']} train {a.arch} batch {a.batch} @{a.input}px, {a.threads} threads: "
          f"{r['step_ms_median']:.1f} ms/step, {r['train_images_per_sec_median']:.1f} images/s, peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
