"""Exercise expert_ffn: one expert's feed-forward network (lesson 09).

Check your work:  python -m minigrok exercises check expert_ffn
"""

import numpy as np  # noqa: F401  (you will want it)


def expert(x, w, v, w1):
    """One Grok-1 expert applied to T tokens.

    x:  float32 [T, D]  tokens
    w:  float32 [D, F]  moe/linear    (its output goes through GELU)
    v:  float32 [D, F]  moe/linear_v  (its output multiplies the GELU's: a gated unit)
    w1: float32 [F, D]  moe/linear_1  (projects back down to D)
    returns float32 [T, D]:  (gelu(x @ w) * (x @ v)) @ w1

    gelu is the tanh approximation:
        gelu(z) = 0.5 * z * (1 + tanh(sqrt(2 / pi) * (z + 0.044715 * z**3)))
    """
    raise NotImplementedError
