"""Exercise rmsnorm_backward: the backward pass of Grok-1's RMSNorm (lesson 16).

Check your work:  python -m minigrok exercises check rmsnorm_backward
"""

import numpy as np  # noqa: F401  (you will want it)


def rms_norm_backward(x, scale, grad, eps=1e-5):
    """The gradients of a loss L through y = rms_norm(x, scale), given dL/dy.

    x:     [T, D]   the input of the norm (T tokens, D features each)
    scale: [D]      its learned scale
    grad:  [T, D]   dL/dy, the gradient arriving from above
    eps:   float    as in the forward: r = 1 / sqrt(mean(x^2 over D) + eps)
    returns (dx [T, D], dscale [D]): dL/dx and dL/dscale

    The forward is y = x * r * scale (lesson 05). Remember that r depends on x, and that
    every token is multiplied by the same scale. The checker compares your gradients with
    central finite differences of the forward, in float64: compute in the inputs' precision.
    """
    raise NotImplementedError
