#!/usr/bin/env python3
"""Create the training-kernel parity fixtures checked by crates/resnet-core/tests/parity_kernels.rs.

One safetensors file per kernel family under fixtures/kernels/: conv2d (input and weight
gradients), batchnorm (training forward, gradients, running statistics, eval forward),
maxpool (values, argmax indices, gradient), cross_entropy (loss and gradient with and
without label smoothing) and linear.

Inputs are drawn in float32 from a seeded numpy generator. Expected values are PyTorch's,
computed in float64 from those float32 inputs and rounded once to float32: that is the
exact answer both PyTorch's float32 kernels and ours approximate, so the Rust tolerance
does not depend on PyTorch's summation order. The script prints how far PyTorch's own
float32 result lies from it, for comparison with ours.

Every tensor is stored in the Rust crate's layout: activations NHWC, conv weights OHWI,
indices and labels int64 (max-pool indices are PyTorch's `iy * W + ix` within the plane).

    tools/reference/.venv/bin/python tools/reference/gen_kernel_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

OUT_DIR = Path(__file__).resolve().parent / "fixtures" / "kernels"
# One key only: safetensors writes the metadata map in hash order, so two keys would make
# the file bytes differ from run to run.
METADATA = {"generator": f"tools/reference/gen_kernel_fixtures.py with torch {torch.__version__}"}

# (name, N, C_in, H, W, C_out, kernel, stride, padding, groups)
CONV_CASES = [
    ("stem", 2, 3, 12, 11, 6, 7, 2, 3, 1),
    ("s1", 2, 8, 6, 5, 8, 3, 1, 1, 1),
    ("s2", 2, 8, 7, 6, 12, 3, 2, 1, 1),
    ("pointwise", 2, 12, 4, 5, 8, 1, 1, 0, 1),
    ("downsample", 2, 8, 7, 7, 12, 1, 2, 0, 1),
    ("grouped", 2, 16, 7, 6, 16, 3, 2, 1, 4),
    ("grouped_s1", 2, 8, 5, 5, 12, 3, 1, 1, 4),
]
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def nhwc(t: torch.Tensor) -> np.ndarray:
    """NCHW (or OIHW) tensor -> NHWC (or OHWI) float32 array."""
    return t.detach().permute(0, 2, 3, 1).contiguous().to(torch.float32).numpy()


def f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().to(torch.float32).numpy()


def uniform(rng: np.random.Generator, shape, lo=-1.0, hi=1.0) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(lo, hi, size=shape).astype(np.float32))


def report(what: str, fn, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Runs `fn` in float64 (the reference) and float32 (PyTorch as trained), prints the
    float32 result's largest error relative to each output's largest magnitude, and returns
    the float64 outputs."""
    ref = fn([t.double() for t in inputs])
    single = fn([t.float() for t in inputs])
    errs = []
    for r, s in zip(ref, single):
        scale = max(r.abs().max().item(), 1e-30)
        errs.append((s.double() - r).abs().max().item() / scale)
    print(f"{what}: torch float32 vs float64, max relative error per output: " + ", ".join(f"{e:.1e}" for e in errs))
    return ref


def with_grads(fn):
    """Wraps `fn(*inputs) -> output` into `inputs -> [output, grad of each input]` for a
    given upstream gradient (the last input)."""

    def run(ts):
        *args, grad_out = ts
        args = [a.clone().requires_grad_(True) for a in args]
        out = fn(*args)
        grads = torch.autograd.grad(out, args, grad_out)
        return [out, *grads]

    return run


def conv_fixtures(rng) -> dict:
    out = {}
    for name, n, c_in, h, w, c_out, k, stride, pad, groups in CONV_CASES:
        x = uniform(rng, (n, c_in, h, w))
        weight = uniform(rng, (c_out, c_in // groups, k, k))
        oh = (h + 2 * pad - k) // stride + 1
        ow = (w + 2 * pad - k) // stride + 1
        grad_out = uniform(rng, (n, c_out, oh, ow))
        fn = with_grads(lambda a, b: F.conv2d(a, b, stride=stride, padding=pad, groups=groups))
        y, gx, gw = report(f"conv2d {name}", fn, [x, weight, grad_out])
        out[f"{name}.geometry"] = np.array([c_in, c_out, k, stride, pad, groups], dtype=np.int64)
        out[f"{name}.input"] = nhwc(x)
        out[f"{name}.weight"] = nhwc(weight)
        out[f"{name}.grad_output"] = nhwc(grad_out)
        out[f"{name}.output"] = nhwc(y)
        out[f"{name}.grad_input"] = nhwc(gx)
        out[f"{name}.grad_weight"] = nhwc(gw)
    return out


def batchnorm_case(rng, name: str, shape, offset: float, spread: float) -> dict:
    n, c, h, w = shape
    per_channel = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
    x = (uniform(rng, shape) * spread * (1 + per_channel) + offset + per_channel).float()
    gamma = uniform(rng, (c,), 0.5, 1.5)
    beta = uniform(rng, (c,), -0.5, 0.5)
    running_mean0 = uniform(rng, (c,), -0.2, 0.2)
    running_var0 = uniform(rng, (c,), 0.5, 1.5)
    grad_out = uniform(rng, shape)

    def train(ts, relu=False):
        x, gamma, beta, rm, rv, grad_out = ts
        args = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
        rm, rv = rm.clone(), rv.clone()
        y = F.batch_norm(args[0], rm, rv, args[1], args[2], training=True, momentum=BN_MOMENTUM, eps=BN_EPS)
        if relu:
            y = F.relu(y)
        grads = torch.autograd.grad(y, args, grad_out)
        return [y, *grads, rm, rv]

    inputs = [x, gamma, beta, running_mean0, running_var0, grad_out]
    y, gx, gg, gb, rm, rv = report(f"batchnorm {name} train", train, inputs)
    _, rgx, rgg, rgb, _, _ = report(f"batchnorm {name} + relu", lambda ts: train(ts, relu=True), inputs)
    (y_eval,) = report(
        f"batchnorm {name} eval",
        lambda ts: [F.batch_norm(ts[0], ts[3], ts[4], ts[1], ts[2], training=False, eps=BN_EPS)],
        [x, gamma, beta, running_mean0, running_var0],
    )
    p = f"{name}."
    return {
        p + "input": nhwc(x),
        p + "gamma": f32(gamma),
        p + "beta": f32(beta),
        p + "running_mean_before": f32(running_mean0),
        p + "running_var_before": f32(running_var0),
        p + "grad_output": nhwc(grad_out),
        p + "output": nhwc(y),
        p + "grad_input": nhwc(gx),
        p + "grad_gamma": f32(gg),
        p + "grad_beta": f32(gb),
        p + "running_mean_after": f32(rm),
        p + "running_var_after": f32(rv),
        p + "relu_grad_input": nhwc(rgx),
        p + "relu_grad_gamma": f32(rgg),
        p + "relu_grad_beta": f32(rgb),
        p + "eval_output": nhwc(y_eval),
    }


def batchnorm_fixtures(rng) -> dict:
    out = {}
    out.update(batchnorm_case(rng, "plain", (4, 6, 5, 3), offset=0.0, spread=1.0))
    # A large mean with a small spread: catastrophic cancellation if the variance were
    # computed as E[x²] − E[x]².
    out.update(batchnorm_case(rng, "offset", (3, 4, 4, 4), offset=50.0, spread=0.01))
    return out


def maxpool_fixtures(rng) -> dict:
    out = {}
    # Values from {-1, 0, 1, 2}: windows full of ties exercise the first-maximum rule.
    x = torch.from_numpy(rng.integers(-1, 3, size=(2, 3, 9, 8)).astype(np.float32))
    for name, k, stride, pad in [("k3s2p1", 3, 2, 1), ("k2s2p0", 2, 2, 0)]:
        oh = (9 + 2 * pad - k) // stride + 1
        ow = (8 + 2 * pad - k) // stride + 1
        grad_out = uniform(rng, (2, 3, oh, ow))
        xd = x.double().requires_grad_(True)
        y, idx = F.max_pool2d(xd, k, stride, pad, return_indices=True)
        (gx,) = torch.autograd.grad(y, [xd], grad_out.double())
        out[f"{name}.geometry"] = np.array([k, stride, pad], dtype=np.int64)
        out[f"{name}.grad_output"] = nhwc(grad_out)
        out[f"{name}.output"] = nhwc(y)
        out[f"{name}.indices"] = idx.permute(0, 2, 3, 1).contiguous().numpy().astype(np.int64)
        out[f"{name}.grad_input"] = nhwc(gx)
    out["input"] = nhwc(x)
    return out


def cross_entropy_fixtures(rng) -> dict:
    n, c = 6, 10
    logits = uniform(rng, (n, c), -3.0, 3.0)
    logits[2] += 40.0  # a row of large logits: needs the max-subtracted log-sum-exp
    labels = torch.from_numpy(rng.integers(0, c, size=n).astype(np.int64))
    out = {"logits": f32(logits), "labels": labels.numpy()}
    for s in (0.0, 0.1):

        def fn(ts):
            z = ts[0].clone().requires_grad_(True)
            loss = F.cross_entropy(z, labels, label_smoothing=s)
            (g,) = torch.autograd.grad(loss, [z])
            return [loss.reshape(1), g]

        loss, grad = report(f"cross_entropy smoothing {s}", fn, [logits])
        out[f"smoothing_{s}.loss"] = f32(loss)
        out[f"smoothing_{s}.grad_logits"] = f32(grad)
    return out


def linear_fixtures(rng) -> dict:
    x = uniform(rng, (4, 12))
    weight = uniform(rng, (5, 12))
    bias = uniform(rng, (5,))
    grad_out = uniform(rng, (4, 5))
    y, gx, gw, gb = report("linear", with_grads(F.linear), [x, weight, bias, grad_out])
    names = ["input", "weight", "bias", "grad_output", "output", "grad_input", "grad_weight", "grad_bias"]
    return {k: f32(v) for k, v in zip(names, [x, weight, bias, grad_out, y, gx, gw, gb])}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20151210)
    families = {
        "conv2d": conv_fixtures,
        "batchnorm": batchnorm_fixtures,
        "maxpool": maxpool_fixtures,
        "cross_entropy": cross_entropy_fixtures,
        "linear": linear_fixtures,
    }
    for name, make in families.items():
        tensors = make(rng)
        path = OUT_DIR / f"{name}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=METADATA)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
