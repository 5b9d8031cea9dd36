"""Grok-1's mixture of experts: a softmax router, top-2 choice, un-renormalised gates.

The router is a float32 [D, E] matrix; its softmax runs over all E = 8 experts and the two
largest probabilities become the gates *as they are* (they sum to less than 1). Some ports
renormalise them: that scales each token's MoE output by 1 / (g1 + g2), a large change
here, but the post-MoE RMSNorm (rms_norm_3) divides any per-token factor out again, all but
its eps, so the logits move only ~1e-5 relative (lesson 13 measures it; the oracle tests
compare the MoE output itself, where the bug is plain). Ties go to the lower expert index, as
``jax.lax.top_k`` does. The official code runs all 8 experts on every token and masks out
the unchosen ones; minigrok runs only the chosen ones, which is the same sum and is what
lets a token touch just 2/8 of the expert weights. Pad tokens are routed like any other
token: the official MoE layer drops its padding mask.
"""

import math

from . import quant
from .xp import array_module

# Tokens per expert call (moe's ``expert_rows``). An expert's activations are [n, F] float32,
# F = 32768 on Grok-1, a handful of them alive at once (134 MB each for 1024 tokens): a long
# prompt's tokens go through an expert this many at a time, so that its memory stops growing
# with the prompt. (On a GPU it must fit engine/placement.reserve_bytes' working room, 1.9 GB
# on Grok-1, beside the 0.8 GB the widened weight takes there.)
EXPERT_ROWS = 1024


def gelu(x):
    """The tanh approximation of GELU (jax.nn.gelu's default), not the exact erf form."""
    xp = array_module(x)
    c = xp.float32(math.sqrt(2.0 / math.pi))
    return 0.5 * x * (1.0 + xp.tanh(c * (x + xp.float32(0.044715) * x * x * x)))


def router_logits(x, router):
    """x: [T, D], router: [D, E] -> logits [T, E] float32.

    Each product and sum in float64 (a product of two float32 is exact there), rounded to
    float32 once. The official code's float32 dot leaves the order of its 6144 additions to
    the library, and so does any float32 BLAS: two experts' logits within a few ulps of each
    other could then swap places between numpy, CuPy and a kernel, and pick another expert.
    Summed in float64, the order moves a logit by ~1e-13 of its terms, far below float32's
    ulp, and every device routes alike (engine/kernels/decode.cu's router_logits sums so
    too). The rows go EXPERT_ROWS at a time: a long prompt's float64 copy stays small.
    """
    xp = array_module(x)
    w = xp.asarray(router, dtype=xp.float64)
    return xp.concatenate([(x[r:r + EXPERT_ROWS].astype(xp.float64) @ w).astype(xp.float32)
                           for r in range(0, max(len(x), 1), EXPERT_ROWS)])


def route(x, router, k: int):
    """x: [T, D], router: [D, E] -> (probs [T, E], expert_ids [T, k], gates [T, k])."""
    xp = array_module(x)
    logits = router_logits(x, router)                                         # [T, E]
    probs = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = probs / probs.sum(axis=-1, keepdims=True)
    # The k largest probabilities are the k largest logits (the softmax keeps their order):
    # chosen from the logits, before exp's rounding could make two of them equal on one
    # machine and not on another. k rounds of argmax, which like jax.lax.top_k picks the
    # lower index on a tie.
    ids, left = [], logits.copy()
    for _ in range(k):
        best = left.argmax(axis=-1)                                           # [T]
        ids.append(best)
        left[xp.arange(len(best)), best] = -xp.inf
    ids = xp.stack(ids, axis=-1)                                              # [T, k]
    return probs, ids, xp.take_along_axis(probs, ids, axis=-1)


def expert(x, linear_w, linear_v, linear_1):
    """One expert's feed-forward: (gelu(x W) * (x V)) W1.  x: [T, D] -> [T, D]."""
    return quant.linear(gelu(quant.linear(x, linear_w)) * quant.linear(x, linear_v), linear_1)


def expert_weight(w, e):
    """Expert e of a stacked [E, in, out] weight: a view, so only its pages are ever read.
    (A weight the engine supplies makes its own view: ``w[e]``.)"""
    if isinstance(w, quant.QuantizedWeight8bit):
        return quant.QuantizedWeight8bit(w.weight[e], w.scales[e])
    return w[e]


def moe(x, router, linear, linear_v, linear_1, *, num_selected: int,
        expert_rows: int = EXPERT_ROWS):
    """x: [T, D] (normed) -> (out [T, D], probs [T, E], expert_ids [T, k], gates [T, k]).

    router: [D, E] float32; linear, linear_v: [E, D, F]; linear_1: [E, F, D] (quantised).
    Each expert takes its tokens ``expert_rows`` at a time.
    """
    xp = array_module(x)
    probs, ids, gates = route(x, router, num_selected)
    out = xp.zeros(x.shape, dtype=xp.float32)
    for e in sorted(set(ids.ravel().tolist())):                           # the chosen experts
        rows, slot = xp.nonzero(ids == e)                                     # tokens choosing e
        weights = [expert_weight(w, e) for w in (linear, linear_v, linear_1)]
        for r in range(0, len(rows), expert_rows):
            rr, ss = rows[r:r + expert_rows], slot[r:r + expert_rows]
            out[rr] += gates[rr, ss][:, None] * expert(x[rr], *weights)
    return out, probs, ids, gates
