"""Rotary position embeddings (RoPE) in Grok-1's "rotate-half" layout.

Each head vector of width d is cut into two halves (x1, x2) rather than into interleaved
pairs; feature i of the first half and feature i of the second half are rotated together
by the angle ``position * base^(-2i/d)``. The interleaved-pairs layout used by some other
ports computes a different function with the same weights.
"""

from .xp import array_module

BASE = 10000


def rope_angles(positions, d: int, base: float = BASE):
    """positions: [T] -> angles [T, d] float32 (the d/2 frequencies, tiled twice)."""
    xp = array_module(positions)
    inv_freq = 1.0 / (xp.float32(base) ** (xp.arange(0, d, 2, dtype=xp.float32) / xp.float32(d)))
    phase = positions.astype(xp.float32)[:, None] * inv_freq[None, :]   # [T, d/2]
    return xp.concatenate([phase, phase], axis=-1)                      # [T, d]


def rotate_half(x):
    """x: [..., d] -> [..., d] = concat(-x2, x1)."""
    xp = array_module(x)
    x1, x2 = xp.split(x, 2, axis=-1)
    return xp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, positions, base: float = BASE):
    """x: [T, N, d] (N heads), positions: [T] -> [T, N, d] float32, each head rotated."""
    angles = rope_angles(positions, x.shape[-1], base)[:, None, :]      # [T, 1, d]
    xp = array_module(x)
    return x * xp.cos(angles) + rotate_half(x) * xp.sin(angles)
