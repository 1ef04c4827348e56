"""Side-by-side inference benchmark: `resnet bench` vs PyTorch (NCHW and channels_last),
same architecture, batch sizes, input, threads; runs interleaved (A B C A B C ...) so
machine noise hits all alike, and reports the median over rounds plus ratios.

    cargo build --release
    tools/reference/setup.sh        # once: torch in tools/reference/.venv
    tools/reference/.venv/bin/python tools/bench/compare.py --arch resnet50 --batch 1,16 --threads 2 --rounds 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--input", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    common = ["--arch", a.arch, "--batch", a.batch, "--input", str(a.input), "--iters", str(a.iters), "--json"]
    ours = [os.path.join(ROOT, "target", "release", "resnet"), "bench", "--threads", str(a.threads)] + common
    torch_cmd = [sys.executable, os.path.join(ROOT, "tools", "bench", "pytorch_bench.py"), "--threads", str(a.threads)] + common
    impls = {"resnet (ours)": ours, "pytorch": torch_cmd, "pytorch-channels_last": torch_cmd + ["--channels-last"]}
    results = {name: {} for name in impls}
    for r in range(a.rounds):
        for name, cmd in impls.items():
            for row in run_json(cmd):
                results[name].setdefault(row["batch"], []).append(row)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{a.arch} @{a.input}px, {a.threads} threads, median of {a.rounds} rounds x {a.iters} iterations")
    print(f"| impl | batch | latency ms | images/s | peak RSS MB | ours / this (images/s) |")
    print(f"|---|---|---|---|---|---|")
    for batch in sorted(results["resnet (ours)"]):
        ours_ips = statistics.median(r["images_per_sec_median"] for r in results["resnet (ours)"][batch])
        for name in impls:
            rows = results[name].get(batch, [])
            if not rows:
                continue
            lat = statistics.median(r["latency_ms_median"] for r in rows)
            ips = statistics.median(r["images_per_sec_median"] for r in rows)
            rss = max(r["peak_rss_mb"] for r in rows)
            print(f"| {name} | {batch} | {lat:.1f} | {ips:.2f} | {rss:.0f} | {ours_ips / ips:.2f}x |")


if __name__ == "__main__":
    main()
