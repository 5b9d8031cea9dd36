"""RMSNorm, the only normalisation in Grok-1 (four per layer, one at the end).

Grok-1 multiplies by the learned scale directly (no ``1 + scale`` as some models do) and,
like the official code, normalises in float32 whatever the activation dtype.
"""

from .xp import array_module

EPS = 1e-5


def rms_norm(x, scale, eps: float = EPS):
    """x: [..., D], scale: [D] -> [..., D] float32: x / sqrt(mean(x^2) + eps) * scale."""
    xp = array_module(x)
    x = x.astype(xp.float32, copy=False)
    mean_sq = (x * x).mean(axis=-1, keepdims=True)            # [..., 1]
    return x / xp.sqrt(mean_sq + xp.float32(eps)) * xp.asarray(scale, dtype=xp.float32)
