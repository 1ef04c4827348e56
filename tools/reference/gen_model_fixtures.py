"""Writes tools/reference/fixtures/models/*: torchvision's outputs for seeded weights and a
seeded input, which `cargo test` compares against without Python.

    tools/reference/setup.sh && tools/reference/.venv/bin/python tools/reference/gen_model_fixtures.py

Per architecture: `<arch>.safetensors` holds `logits` [N, classes], `pool` [N, C] (the
flattened avgpool output), and for each stage `layerK.head` (the first 256 values of the
stage output in NCHW order) and `layerK.mean_abs`, to localise a mismatch. Weights come from
`seeded_state_dict` (prng.py), the input from the same stream seeded with INPUT_SEED.
"""
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from prng import SplitMix64, uniform_fast, value_range  # noqa: E402
import cifar_resnet  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "models")
WEIGHT_SEED = 20161210
INPUT_SEED = 7
BATCH, SIZE = 2, 128
ARCHS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
# The paper's CIFAR nets (tools/reference/cifar_resnet.py) on 32x32 inputs.
CIFAR_ARCHS = ["resnet20", "resnet20-b", "plain20"]
CIFAR_SIZE = 32


def seeded_state_dict(model, seed):
    rng = SplitMix64(seed)
    sd = model.state_dict()
    for name, t in sd.items():
        if not t.is_floating_point():
            continue
        lo, hi = value_range(name, tuple(t.shape))
        vals = uniform_fast(rng, t.numel(), lo, hi)
        sd[name] = torch.from_numpy(vals).reshape(t.shape)
    return sd


def seeded_input(seed, shape):
    n = 1
    for s in shape:
        n *= s
    return torch.from_numpy(uniform_fast(SplitMix64(seed), n, -2.0, 2.0)).reshape(shape)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    meta = {"weight_seed": WEIGHT_SEED, "input_seed": INPUT_SEED, "input_shape": [BATCH, 3, SIZE, SIZE],
            "cifar_input_shape": [BATCH, 3, CIFAR_SIZE, CIFAR_SIZE],
            "input_range": [-2.0, 2.0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "archs": {}}
    for arch in ARCHS + CIFAR_ARCHS:
        cifar = arch in CIFAR_ARCHS
        size = CIFAR_SIZE if cifar else SIZE
        x = seeded_input(INPUT_SEED, (BATCH, 3, size, size))
        model = cifar_resnet.get_model(arch) if cifar else torchvision.models.get_model(arch, weights=None)
        model.load_state_dict(seeded_state_dict(model, WEIGHT_SEED))
        model.eval()
        stages = {}
        n_stages = 3 if cifar else 4
        hooks = [getattr(model, f"layer{k}").register_forward_hook(
            lambda m, i, o, k=k: stages.__setitem__(k, o.detach().clone())) for k in range(1, n_stages + 1)]
        pooled = {}
        hooks.append(model.avgpool.register_forward_hook(
            lambda m, i, o: pooled.__setitem__("pool", torch.flatten(o, 1).detach().clone())))
        with torch.no_grad():
            logits = model(x)
        for h in hooks:
            h.remove()
        tensors = {"logits": logits.contiguous(), "pool": pooled["pool"].contiguous()}
        for k, o in stages.items():
            tensors[f"layer{k}.head"] = o.flatten()[:256].contiguous()
            tensors[f"layer{k}.mean_abs"] = o.abs().mean().reshape(1)
        save_file(tensors, os.path.join(OUT, f"{arch}.safetensors"))
        params = sum(p.numel() for p in model.parameters())
        meta["archs"][arch] = {
            "params": params,
            "logits_max_abs": float(logits.abs().max()),
            "top5": logits.topk(5, dim=1).indices.tolist(),
        }
        print(arch, "params", params, "max|logit|", float(logits.abs().max()),
              "stage mean|x|", [round(float(stages[k].abs().mean()), 3) for k in range(1, n_stages + 1)])
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
