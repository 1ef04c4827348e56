#!/usr/bin/env python3
"""Generates the optimizer, schedule and gradient-clipping fixtures in tools/reference/fixtures/optim/.

    tools/reference/.venv/bin/python tools/reference/gen_optim_fixtures.py

writes (about 100 KB in all):

    sgd.safetensors     five steps of torch.optim.SGD on five parameters, two param groups (weights with
                        weight decay, BatchNorm/bias parameters without), a different lr at each step:
                          init.<name>                initial values
                          grad.<k>.<name>            gradient fed at step k (0-based)
                          <variant>.<k>.param.<name> values after step k
                          <variant>.<k>.buf.<name>   momentum buffer after step k (when momentum != 0)
    sgd.json            the variants' hyper-parameters, the lr of each step, which names decay
    clip.safetensors    torch.nn.utils.clip_grad_norm_ cases:
                          <case>.in.<i> / <case>.out.<i>   gradients before and after, <case>.total (shape [1])
                        and torch.linalg.vector_norm of vectors of every length 1..=80 and a few long ones:
                          norm.in.<n> / norm.out.<n>
    clip.json           each case's max_norm and tensor count, and the lengths tested for the norm
    schedules.json      learning rates from torch.optim.lr_scheduler for 30 positions per schedule (and
                        sampled positions of one 3000-step schedule), as
                        the bits of the f64 (JSON numbers would not round-trip exactly): what
                        `scheduler.get_last_lr()[0]` was when optimizer.step() ran at each position

Every float is exact: f32 tensors in safetensors, f64 learning rates as integer bit patterns.
The SGD update is checked to be identical for foreach=False and foreach=True before writing.
"""
import json
import pathlib
import struct
import warnings

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tools" / "reference" / "fixtures" / "optim"

# (name, shape, decays). BatchNorm and bias parameters are excluded from weight decay.
PARAMS = [
    ("conv.weight", (4, 3, 3, 3), True),
    ("bn.weight", (16,), False),
    ("bn.bias", (16,), False),
    ("fc.weight", (10, 37), True),
    ("fc.bias", (10,), False),
]
LRS = [0.1, 0.1, 0.05, 0.2, 0.0125]
VARIANTS = {
    "momentum": dict(momentum=0.9, weight_decay=5e-4, nesterov=False, dampening=0.0),
    "nesterov": dict(momentum=0.9, weight_decay=5e-4, nesterov=True, dampening=0.0),
    "dampened": dict(momentum=0.8, weight_decay=1e-2, nesterov=False, dampening=0.3),
    "plain": dict(momentum=0.0, weight_decay=5e-4, nesterov=False, dampening=0.0),
}


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def sgd_fixture(tensors, meta):
    g = torch.Generator().manual_seed(20250101)
    init = {name: torch.randn(*shape, generator=g) * 0.5 for name, shape, _ in PARAMS}
    # Gradients of varied magnitude per step, including exact zeros.
    grads = []
    for k in range(len(LRS)):
        step = {}
        for name, shape, _ in PARAMS:
            grad = torch.randn(*shape, generator=g) * (10.0 ** (k % 3 - 1))
            grad.view(-1)[::7] = 0.0
            step[name] = grad
        grads.append(step)
    for name, _, _ in PARAMS:
        tensors[f"init.{name}"] = init[name]
    for k, step in enumerate(grads):
        for name, grad in step.items():
            tensors[f"grad.{k}.{name}"] = grad

    for variant, hp in VARIANTS.items():
        results = []
        for foreach in (False, True):
            params = {name: torch.nn.Parameter(init[name].clone()) for name, _, _ in PARAMS}
            groups = [
                {"params": [params[n] for n, _, d in PARAMS if d], "weight_decay": hp["weight_decay"]},
                {"params": [params[n] for n, _, d in PARAMS if not d], "weight_decay": 0.0},
            ]
            opt = torch.optim.SGD(
                groups, lr=LRS[0], momentum=hp["momentum"], dampening=hp["dampening"],
                nesterov=hp["nesterov"], foreach=foreach,
            )
            out = {}
            for k, lr in enumerate(LRS):
                for group in opt.param_groups:
                    group["lr"] = lr
                for name, p in params.items():
                    p.grad = grads[k][name].clone()
                opt.step()
                for name, p in params.items():
                    out[f"{variant}.{k}.param.{name}"] = p.detach().clone()
                    if hp["momentum"] != 0:
                        out[f"{variant}.{k}.buf.{name}"] = opt.state[p]["momentum_buffer"].clone()
            results.append(out)
        for key in results[0]:
            assert torch.equal(results[0][key], results[1][key]), f"foreach changes {key}"
        tensors.update(results[0])
    meta["lrs"] = LRS
    meta["lr_bits"] = [f64_bits(lr) for lr in LRS]
    meta["params"] = [{"name": n, "shape": list(s), "decay": d} for n, s, d in PARAMS]
    meta["variants"] = VARIANTS


def clip_fixture(tensors, meta):
    g = torch.Generator().manual_seed(7)
    cases = {
        # Lengths exercise every remainder mod 8 and mod 4 of the kernel's lanes.
        "clipped": ([1, 3, 7, 8, 13, 100, 1000, 4099], 1.0),
        "unclipped": ([5, 64, 9], 1e6),
        "single": ([300], 0.25),
    }
    meta["cases"] = {}
    for case, (lengths, max_norm) in cases.items():
        params = [torch.nn.Parameter(torch.zeros(n)) for n in lengths]
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape[0], generator=g) * (0.1 * (i + 1))
            tensors[f"{case}.in.{i}"] = p.grad.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        for i, p in enumerate(params):
            tensors[f"{case}.out.{i}"] = p.grad.clone()
        tensors[f"{case}.total"] = total.reshape(1).clone()
        meta["cases"][case] = {"max_norm": max_norm, "count": len(lengths)}
    lengths = list(range(1, 81)) + [255, 256, 257, 1023, 12345]
    for n in lengths:
        x = torch.randn(n, generator=g) * (10.0 ** ((n % 5) - 2))
        tensors[f"norm.in.{n}"] = x
        tensors[f"norm.out.{n}"] = torch.linalg.vector_norm(x, 2).reshape(1)
    meta["norm_lengths"] = lengths


def lrs_of(make_scheduler, n, base_lr=0.1):
    """Learning rate in use at each of n optimizer steps, stepping the scheduler after each."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return out


def schedule_fixture():
    S = torch.optim.lr_scheduler
    n = 30

    def warm(main, length, start):
        def make(opt):
            return S.SequentialLR(
                opt, [S.LinearLR(opt, start_factor=start, total_iters=length), main(opt)], milestones=[length]
            )
        return make

    schedules = {
        "constant": (dict(decay={"kind": "constant"}), lambda o: S.MultiStepLR(o, milestones=[])),
        "multistep": (
            dict(decay={"kind": "multi_step", "milestones": [5, 12, 12, 20], "gamma": 0.1}),
            lambda o: S.MultiStepLR(o, milestones=[5, 12, 12, 20], gamma=0.1),
        ),
        # T_max 12 over 30 positions goes past the minimum, into torch's periodic continuation.
        "cosine": (
            dict(decay={"kind": "cosine", "t_max": 12, "eta_min": 1e-4}),
            lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=1e-4),
        ),
        "cosine_long": (
            dict(decay={"kind": "cosine", "t_max": 30, "eta_min": 0.0}),
            lambda o: S.CosineAnnealingLR(o, T_max=30),
        ),
        "warmup_cosine": (
            dict(decay={"kind": "cosine", "t_max": 25, "eta_min": 1e-5}, warmup={"length": 5, "start_factor": 0.01}),
            warm(lambda o: S.CosineAnnealingLR(o, T_max=25, eta_min=1e-5), 5, 0.01),
        ),
        "warmup_multistep": (
            dict(
                decay={"kind": "multi_step", "milestones": [7, 15], "gamma": 0.2},
                warmup={"length": 3, "start_factor": 1.0 / 3},
            ),
            warm(lambda o: S.MultiStepLR(o, milestones=[7, 15], gamma=0.2), 3, 1.0 / 3),
        ),
        "warmup_constant": (
            dict(decay={"kind": "constant"}, warmup={"length": 10, "start_factor": 0.1}),
            warm(lambda o: S.MultiStepLR(o, milestones=[]), 10, 0.1),
        ),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (spec, make) in schedules.items():
            lrs = lrs_of(make, n)
            out[name] = dict(spec, base_lr=0.1, lrs=lrs, lr_bits=[f64_bits(x) for x in lrs])
        # A long per-step schedule, where torch's recurrences drift furthest from the closed
        # forms; every 37th position and the last ones are kept.
        spec = dict(decay={"kind": "cosine", "t_max": 2900, "eta_min": 0.0}, warmup={"length": 100, "start_factor": 0.001})
        lrs = lrs_of(warm(lambda o: S.CosineAnnealingLR(o, T_max=2900), 100, 0.001), 3000, base_lr=0.4)
        positions = sorted(set(range(0, 3000, 37)) | set(range(2990, 3000)))
        kept = [lrs[i] for i in positions]
        out["warmup_cosine_3000"] = dict(
            spec, base_lr=0.4, positions=positions, lrs=kept, lr_bits=[f64_bits(x) for x in kept]
        )
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, {}
    sgd_fixture(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "sgd.safetensors"))
    (OUT / "sgd.json").write_text(json.dumps(meta, indent=1) + "\n")

    tensors, meta = {}, {}
    clip_fixture(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "clip.safetensors"))
    (OUT / "clip.json").write_text(json.dumps(meta, indent=1) + "\n")

    schedules = schedule_fixture()
    lines = [f" {json.dumps(name)}: {json.dumps(spec)}" for name, spec in schedules.items()]
    (OUT / "schedules.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    meta_torch = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    (OUT / "generated_with.json").write_text(json.dumps(meta_torch) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
