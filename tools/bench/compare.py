"""Side-by-side benchmark: `resnet bench` vs PyTorch (NCHW and channels_last) and ONNX Runtime,
and in bf16 `resnet bench --precision bf16` vs PyTorch autocast bf16 (channels_last),
for inference, and `resnet bench --train` vs PyTorch (NCHW and channels_last) for training.
Same architecture, batch sizes, input, threads, warm-up and timed iterations everywhere; each
implementation runs in its own process, interleaved A B C D A B C D ... across rounds so
machine noise hits all alike; reports the median over rounds, peak RSS and "ours vs this"
(our images/s divided by theirs: > 1 means we are faster; for inference this is also their
latency / our latency; bf16 rows are compared with ours in bf16). One markdown table per
section on stdout, progress on stderr.

    tools/bench/compare.sh --setup        # once: venv (torch, onnxruntime), binary if missing
    tools/bench/compare.sh --threads 2 --rounds 3
    # or by hand:
    tools/reference/.venv/bin/python tools/bench/compare.py --arch resnet50 --batch 1,16 --threads 2 --rounds 3
    tools/reference/.venv/bin/python tools/bench/compare.py --skip-infer --train-cases resnet20:128:32
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "tools", "bench")
OURS = "resnet (ours)"
OURS_BF16 = "resnet (ours) bf16"


def run_json(cmd):
    """JSON lines printed by `cmd`, or None (with the error on stderr) if it failed."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}", file=sys.stderr)
        return None
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmd_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def parse_cases(spec):
    """"resnet50:16:224,resnet20:128:32" -> [("resnet50", 16, 224), ("resnet20", 128, 32)]."""
    cases = []
    for item in filter(None, spec.split(",")):
        arch, batch, size = item.split(":")
        cases.append((arch, int(batch), int(size)))
    return cases


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50", help="inference architecture")
    ap.add_argument("--batch", default="1,16", help="inference batch sizes, comma-separated")
    ap.add_argument("--input", type=int, default=224, help="inference input height and width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs (inference) / steps (training) per process")
    ap.add_argument("--iters", type=int, default=5, help="timed inference runs per batch size per round")
    ap.add_argument("--train-iters", type=int, help="timed training steps per case per round (default: --iters)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-cases", default="resnet50:16:224,resnet20:128:32",
                    help="training cases as arch:batch:input, comma-separated")
    ap.add_argument("--skip-infer", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bf16 rows (ours --precision bf16, "
                    "PyTorch autocast bf16 channels_last); their ratio column compares with ours bf16")
    ap.add_argument("--no-onnxruntime", action="store_true", help="leave ONNX Runtime out of the inference section")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "resnet"), help="our binary")
    ap.add_argument("--raw", help="also write every JSON row to this file (JSON lines)")
    a = ap.parse_args()
    train_iters = a.train_iters or a.iters
    notes = []

    # Inference: each command covers every batch size.
    infer = {}
    if not a.skip_infer:
        common = ["--arch", a.arch, "--batch", a.batch, "--input", str(a.input), "--threads", str(a.threads),
                  "--warmup", str(a.warmup), "--iters", str(a.iters), "--json"]
        py = lambda script: [sys.executable, os.path.join(BENCH, script)]  # noqa: E731
        infer = {OURS: [a.bin, "bench"] + common,
                 "pytorch": py("pytorch_bench.py") + common,
                 "pytorch-channels_last": py("pytorch_bench.py") + common + ["--channels-last"]}
        if not a.no_bf16:
            infer[OURS_BF16] = [a.bin, "bench"] + common + ["--precision", "bf16"]
            infer["pytorch-bf16-channels_last"] = py("pytorch_bench.py") + common + ["--channels-last", "--bf16"]
        ort_cmd = py("onnxruntime_bench.py") + common
        if a.no_onnxruntime:
            notes.append("onnxruntime: left out (--no-onnxruntime)")
        elif importlib.util.find_spec("onnxruntime") is None:
            notes.append("onnxruntime: skipped, not importable (tools/bench/compare.sh --setup installs it)")
        else:
            # Export once, outside the timed rounds (cached in tools/bench/.cache/).
            print(f"exporting {a.arch}@{a.input}px to ONNX (cached) ...", file=sys.stderr)
            exp = ort_cmd[:2] + ["--arch", a.arch, "--input", str(a.input), "--export-only"]
            p = subprocess.run(exp, capture_output=True, text=True)
            if p.returncode == 0:
                infer["onnxruntime"] = ort_cmd
            else:
                print(p.stderr[-3000:], file=sys.stderr)
                notes.append("onnxruntime: skipped, ONNX export failed (see stderr; needs onnx + onnxscript)")

    # Training: one command per (case, implementation).
    train = {}
    if not a.skip_train:
        for arch, batch, size in parse_cases(a.train_cases):
            common = ["--arch", arch, "--batch", str(batch), "--input", str(size), "--threads", str(a.threads),
                      "--warmup", str(a.warmup), "--iters", str(train_iters), "--json"]
            pt = [sys.executable, os.path.join(BENCH, "pytorch_train_bench.py")] + common
            train[(arch, batch, size)] = {OURS: [a.bin, "bench", "--train"] + common,
                                          "pytorch": pt, "pytorch-channels_last": pt + ["--channels-last"]}

    infer_rows = {name: {} for name in infer}  # name -> batch -> [row per round]
    train_rows = {case: {name: [] for name in impls} for case, impls in train.items()}
    raw = []
    load_start = os.getloadavg()
    for r in range(a.rounds):
        for name, cmd in infer.items():
            for row in run_json(cmd) or []:
                infer_rows[name].setdefault(row["batch"], []).append(row)
                raw.append({"section": "inference", "round": r, "name": name, **row})
        for case, impls in train.items():
            for name, cmd in impls.items():
                for row in run_json(cmd) or []:
                    train_rows[case][name].append(row)
                    raw.append({"section": "training", "round": r, "name": name, **row})
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    load_end = os.getloadavg()
    if a.raw:
        with open(a.raw, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in raw)

    vers = [f"{pkg} {version(pkg)}" for pkg in ("torch", "torchvision", "onnxruntime") if version(pkg)]
    commit = cmd_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = "+dirty" if cmd_out(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    ours_v = cmd_out([a.bin, "--version"]) if os.path.exists(a.bin) else "missing"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); {a.threads} threads; {a.rounds} rounds; "
          f"warm-up {a.warmup}; {a.iters} inference iterations, {train_iters} training steps per round")
    print(f"Versions: {ours_v} (git {commit}{dirty}); {'; '.join(vers)}; Python {platform.python_version()}")
    print(f"Load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    for n in notes:
        print(f"Note: {n}")

    if infer:
        print(f"\n### Inference: {a.arch} @{a.input}px (median over rounds of per-round medians)\n")
        print("| impl | batch | latency ms | min latency ms | images/s | peak RSS MB | ours vs this (images/s) |")
        print("|---|---|---|---|---|---|---|")
        batches = sorted({b for rows in infer_rows.values() for b in rows})
        for batch in batches:
            for name in infer:
                ours = infer_rows[OURS_BF16 if "bf16" in name else OURS].get(batch)
                rows = infer_rows[name].get(batch)
                if not rows:
                    print(f"| {name} | {batch} | failed | | | | |")
                    continue
                ips = med(rows, "images_per_sec_median")
                ratio = f"{med(ours, 'images_per_sec_median') / ips:.2f}x" if ours else "n/a"
                print(f"| {name} | {batch} | {med(rows, 'latency_ms_median'):.2f} | "
                      f"{min(r['latency_ms_min'] for r in rows):.2f} | {ips:.2f} | "
                      f"{max(r['peak_rss_mb'] for r in rows):.0f} | {ratio} |")

    if train:
        print("\n### Training step (forward, cross-entropy, backward, SGD momentum; median over rounds)\n")
        print("| impl | arch | batch | input | step ms | images/s | activations MB | peak RSS MB | ours vs this (images/s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (arch, batch, size), impls in train_rows.items():
            ours = impls[OURS]
            for name, rows in impls.items():
                if not rows:
                    print(f"| {name} | {arch} | {batch} | {size} | failed | | | | |")
                    continue
                ips = med(rows, "train_images_per_sec_median")
                ratio = f"{med(ours, 'train_images_per_sec_median') / ips:.2f}x" if ours else "n/a"
                act = f"{med(rows, 'activation_mb'):.0f}" if "activation_mb" in rows[0] else "n/a"
                print(f"| {name} | {arch} | {batch} | {size} | {med(rows, 'step_ms_median'):.1f} | {ips:.2f} | {act} | "
                      f"{max(r['peak_rss_mb'] for r in rows):.0f} | {ratio} |")
        print("\nActivations: what our forward keeps for the backward (`resnet bench --train`); PyTorch does not "
              "report it.")
        print("\nONNX Runtime is inference-only here (training needs the separate onnxruntime-training build).")


if __name__ == "__main__":
    main()
