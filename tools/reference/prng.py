"""splitmix64 and the seeded weight scheme, mirrored bit for bit by
crates/resnet-core/src/prng.rs and crates/resnet-core/src/model/seeded.rs.

Both sides walk the model's state_dict in torchvision's order and draw every value of every
float tensor from one stream, in PyTorch's memory order (row-major, conv weights OIHW). Each
value is computed in float64 and rounded once to float32, so the two sides agree exactly.
"""
import math

import numpy as np

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self, count: int, lo: float, hi: float) -> np.ndarray:
        """`count` values in [lo, hi) as float32 (float64 math, one rounding)."""
        out = np.empty(count, dtype=np.float64)
        for i in range(count):
            out[i] = lo + (hi - lo) * ((self.next_u64() >> 11) * (1.0 / (1 << 53)))
        return out.astype(np.float32)


def uniform_fast(rng: SplitMix64, count: int, lo: float, hi: float) -> np.ndarray:
    """Vectorised splitmix64: the same stream as `rng.uniform`, much faster for big tensors."""
    idx = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(rng.state) + idx * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    rng.state = (rng.state + count * 0x9E3779B97F4A7C15) & MASK
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (lo + (hi - lo) * u).astype(np.float32)


def value_range(name: str, shape) -> tuple:
    """The [lo, hi) range each kind of tensor is drawn from (see seeded.rs for the why)."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 4:  # conv weight, OIHW: Kaiming-uniform bound for ReLU nets
        fan_in = shape[1] * shape[2] * shape[3]
        b = math.sqrt(6.0 / fan_in)
        return (-b, b)
    if name.startswith("fc."):
        b = 1.0 / math.sqrt(shape[1] if leaf == "weight" else shape[0])
        return (-b, b)
    # BatchNorm: randomised so eval-mode BN is no identity, kept near it so depth is stable.
    return {
        "weight": (0.5, 1.0),
        "bias": (-0.2, 0.2),
        "running_mean": (-0.2, 0.2),
        "running_var": (0.5, 1.5),
    }[leaf]
