"""Exercise rmsnorm: Grok-1's RMSNorm (lesson 05).

Check your work:  python -m minigrok exercises check rmsnorm
"""

import numpy as np  # noqa: F401  (you will want it)


def rms_norm(x, scale, eps=1e-5):
    """Normalise every token (row) of x by its root mean square, then multiply by scale.

    x:     float32 [T, D]   T tokens, D features each
    scale: float32 [D]      the learned scale; Grok-1 multiplies by it directly
    eps:   float            added to the mean square, inside the square root
    returns float32 [T, D]:  x / sqrt(mean(x^2 over D) + eps) * scale

    Compute in float32, one mean per row.
    """
    raise NotImplementedError
