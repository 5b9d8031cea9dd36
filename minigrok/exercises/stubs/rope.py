"""Exercise rope: rotary position embeddings in Grok-1's "rotate-half" layout (lesson 06).

Check your work:  python -m minigrok exercises check rope
"""

import numpy as np  # noqa: F401  (you will want it)


def apply_rope(x, positions, base=10000):
    """Rotate every head vector of x by angles that grow with its token's position.

    x:         float32 [T, N, d]  T tokens, N heads, head width d (even)
    positions: int [T]            the position of each token (0, 1, 2, ... without a cache)
    base:      the RoPE base, 10000 in Grok-1
    returns float32 [T, N, d]

    Split each head vector into halves x1 = x[..., :d/2], x2 = x[..., d/2:]. Feature i of
    x1 and feature i of x2 form a pair rotated by the angle
        position * base ** (-2 i / d),   i = 0 .. d/2 - 1.
    Written with the angles tiled twice (angle[i] = angle[i + d/2]):
        out = x * cos(angle) + rotate_half(x) * sin(angle),  rotate_half(x) = concat(-x2, x1)
    """
    raise NotImplementedError
