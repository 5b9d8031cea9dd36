"""The backward pass of every Grok-1 component, one forward/backward pair each.

Each ``*_forward`` computes what the reference computes (reference/rmsnorm.py, rope.py,
attention.py, moe.py) on a batch, in the dtype of its input (float32 to train, float64 for
the finite-difference checks in tests/test_training.py), and returns what its backward
needs; each ``*_backward`` takes the gradient of the loss with respect to the output and
returns the gradients with respect to the inputs and the weights. tests/test_training.py
checks every pair against finite differences (hypothesis, float64) and every forward
against the reference's own function.

Shapes: B sequences of T tokens; N = B*T tokens flattened. Weights are plain float arrays
[in, out] named as in the checkpoint (query, key, value, linear; linear, linear_v, linear_1).
"""

import math

import numpy as np

from ..reference.attention import SOFT_CAP
from ..reference.rmsnorm import EPS
from ..reference.rope import rope_angles, rotate_half
from ..reference.xp import array_module

# The tanh approximation of GELU, with the constants of reference/moe.gelu (float32 there:
# the same rounded value is used here so that both compute one function).
GELU_C = float(np.float32(math.sqrt(2.0 / math.pi)))
GELU_A = float(np.float32(0.044715))


# -- RMSNorm ----------------------------------------------------------------------------

def rms_norm_forward(x, scale, eps: float = EPS):
    """x: [..., D], scale: [D] -> (y [..., D], cache). y = x / rms(x) * scale."""
    xp = array_module(x)
    r = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)          # [..., 1]
    xn = x * r                                                               # [..., D]
    return xn * scale, (xn, r)


def rms_norm_backward(g, scale, cache):
    """g: dL/dy [..., D] -> (dL/dx [..., D], dL/dscale [D]).

    y_j = x_j r s_j with r = (mean(x^2) + eps)^-1/2, so dr/dx_j = -r^3 x_j / D and
    dL/dx_j = r (g_j s_j - xn_j mean(g s xn)): the gradient loses its component along x.
    """
    xn, r = cache
    gs = g * scale
    dx = r * (gs - xn * (gs * xn).mean(axis=-1, keepdims=True))
    dscale = (g * xn).reshape(-1, xn.shape[-1]).sum(axis=0)
    return dx, dscale


# -- RoPE (a rotation: its backward is the inverse rotation) -----------------------------

def rope_tables(T: int, d: int, xp, dtype):
    """(cos, sin) [T, 1, d] of positions 0..T-1, in ``dtype`` (reference.rope's angles)."""
    angles = rope_angles(xp.arange(T), d).astype(dtype)[:, None, :]
    return xp.cos(angles), xp.sin(angles)


def rope_forward(x, cos, sin):
    """x: [B, T, N, d] -> [B, T, N, d], each head rotated as reference.rope.apply_rope."""
    return x * cos + rotate_half(x) * sin


def rope_backward(g, cos, sin):
    """g: dL/dy [B, T, N, d] -> dL/dx. rotate_half is R x = (-x2, x1), so R^T u = (u2, -u1)."""
    xp = array_module(g)
    u1, u2 = xp.split(g * sin, 2, axis=-1)
    return g * cos + xp.concatenate([u2, -u1], axis=-1)


# -- Attention ----------------------------------------------------------------------------

def attention_forward(x, query, key, value, linear, *, num_q_heads: int, num_kv_heads: int,
                      key_size: int, multiplier: float, keep):
    """x: [B, T, D] (normed), keep: [B, T] bool (not padding) -> (out [B, T, D], cache).

    As reference.attention: GQA (query head h reads kv head h // G), RoPE at positions
    0..T-1, scores q.k * multiplier soft-capped to 30 tanh(s/30), causal and pad-key mask
    to -1e30, softmax, weights @ v, output projection.
    """
    xp = array_module(x)
    B, T, _ = x.shape
    H, K, d = num_q_heads, num_kv_heads, key_size
    G = H // K
    cos, sin = rope_tables(T, d, xp, x.dtype)
    q = rope_forward((x @ query).reshape(B, T, H, d), cos, sin)                  # [B, T, H, d]
    k = rope_forward((x @ key).reshape(B, T, K, d), cos, sin)                    # [B, T, K, d]
    v = (x @ value).reshape(B, T, K, d)                                          # [B, T, K, d]
    qg = q.reshape(B, T, K, G, d).transpose(0, 2, 3, 1, 4)                      # [B, K, G, T, d]
    kt = k.transpose(0, 2, 3, 1)[:, :, None]                                     # [B, K, 1, d, T]
    vt = v.transpose(0, 2, 1, 3)[:, :, None]                                     # [B, K, 1, T, d]
    # Each [B, K, G, T, T] array is a large share of a training step's time: the steps are
    # done in place, and the softmax subtracts the cap (every capped score is <= 30) rather
    # than each row's maximum, the same probabilities without two more passes.
    t = qg @ kt                                                                  # [B, K, G, T, T]
    t *= multiplier / SOFT_CAP
    xp.tanh(t, out=t)
    visible = xp.tril(xp.ones((T, T), dtype=bool)) & keep[:, None, None, None, :]  # [B,1,1,T,T]
    p = t * SOFT_CAP
    p -= SOFT_CAP
    xp.exp(p, out=p)
    p *= visible                                             # masked: exp(-1e30 - max) = 0
    total = p.sum(axis=-1, keepdims=True)
    blind = total == 0              # a query that sees no key: the official -1e30 fill makes
    if blind.any():                 # its row uniform over every key of the call
        p = xp.where(blind, 1.0 / T, p)
        total = xp.where(blind, 1.0, total)
    p /= total
    # What the backward needs of t: the cap's derivative 1 - t^2, zero where masked (a
    # masked score is the constant -1e30), times the multiplier of q.k.
    t *= t
    xp.subtract(1.0, t, out=t)
    t *= visible * multiplier
    o = (p @ vt).transpose(0, 3, 1, 2, 4).reshape(B, T, H * d)                   # [B, T, H*d]
    cache = dict(x=x, qg=qg, kt=kt, vt=vt, dcap=t, p=p, o=o, cos=cos, sin=sin)
    return o @ linear, cache


def attention_backward(g, query, key, value, linear, cache):
    """g: dL/dout [B, T, D] -> (dL/dx [B, T, D], {query, key, value, linear: dL/dW}).
    (The multiplier of q.k is in the cache, folded into the cap's derivative.)"""
    x, qg, kt, vt, p, o = (cache[n] for n in ("x", "qg", "kt", "vt", "p", "o"))
    B, K, G, T, d = qg.shape
    D = x.shape[-1]
    grads = {"linear": o.reshape(-1, o.shape[-1]).T @ g.reshape(-1, D)}
    do = (g @ linear.T).reshape(B, T, K, G, d).transpose(0, 2, 3, 1, 4)         # [B, K, G, T, d]
    dv = (p.transpose(0, 1, 2, 4, 3) @ do).sum(axis=2)                           # [B, K, T, d]
    ds = do @ vt.transpose(0, 1, 2, 4, 3)                                        # [B, K, G, T, T]
    # Through the softmax, then the cap: p (dp - sum(dp p)) (1 - t^2) * multiplier.
    ds -= (ds * p).sum(axis=-1, keepdims=True)
    ds *= p
    ds *= cache["dcap"]
    dq = (ds @ kt.transpose(0, 1, 2, 4, 3)).transpose(0, 3, 1, 2, 4)             # [B, T, K, G, d]
    dk = (ds.transpose(0, 1, 2, 4, 3) @ qg).sum(axis=2).transpose(0, 2, 1, 3)   # [B, T, K, d]
    dq = rope_backward(dq.reshape(B, T, K * G, d), cache["cos"], cache["sin"])
    dk = rope_backward(dk, cache["cos"], cache["sin"])
    dq, dk = dq.reshape(B * T, -1), dk.reshape(B * T, -1)
    dv = dv.transpose(0, 2, 1, 3).reshape(B * T, -1)
    xf = x.reshape(B * T, D)
    grads.update(query=xf.T @ dq, key=xf.T @ dk, value=xf.T @ dv)
    dx = dq @ query.T + dk @ key.T + dv @ value.T
    return dx.reshape(B, T, D), grads


# -- Mixture of experts ------------------------------------------------------------------

def gelu_forward(a):
    """a: [...] -> (gelu(a), tanh term): reference.moe.gelu, the tanh approximation."""
    xp = array_module(a)
    t = xp.tanh(GELU_C * (a + GELU_A * a * a * a))
    return 0.5 * a * (1.0 + t), t


def gelu_backward(g, a, t):
    """g: dL/dgelu(a) -> dL/da."""
    return g * (0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * GELU_C * (1.0 + 3 * GELU_A * a * a))


def top_k(scores, k: int):
    """scores: [N, E] router logits (or probabilities: the same order) -> ids [N, k]:
    reference.moe.route's choice, the k largest, ties to the lower index."""
    xp = array_module(scores)
    ids, left = [], scores.copy()
    for _ in range(k):
        best = left.argmax(axis=-1)
        ids.append(best)
        left[xp.arange(len(best)), best] = -xp.inf
    return xp.stack(ids, axis=-1)


def moe_forward(x, router, linear, linear_v, linear_1, *, num_selected: int):
    """x: [N, D] (normed) -> (out [N, D], cache). As reference.moe: softmax router over all
    E experts, the top ``num_selected`` probabilities as gates (not renormalised), each
    expert (gelu(x W) * (x V)) W1. The cache's "probs" [N, E] and "ids" [N, k] are the
    routing, for the load-balancing loss and the utilisation report."""
    xp = array_module(x)
    z = x @ router                                                               # [N, E]
    z = z - z.max(axis=-1, keepdims=True)
    probs = xp.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    ids = top_k(z, num_selected)                                                 # [N, k]
    gates = xp.take_along_axis(probs, ids, axis=-1)                              # [N, k]
    out = xp.zeros_like(x)
    experts = {}
    for e in range(router.shape[1]):
        rows, slot = xp.nonzero(ids == e)
        if len(rows) == 0:
            continue
        xe = x[rows]                                                             # [n, D]
        a, b = xe @ linear[e], xe @ linear_v[e]                                  # [n, F]
        ga, t = gelu_forward(a)
        y = (ga * b) @ linear_1[e]                                               # [n, D]
        out[rows] += gates[rows, slot][:, None] * y
        experts[e] = (rows, slot, a, b, ga, t, y)
    return out, dict(x=x, probs=probs, ids=ids, gates=gates, experts=experts)


def moe_backward(g, router, linear, linear_v, linear_1, cache, dprobs_extra=None):
    """g: dL/dout [N, D] -> (dL/dx [N, D], {router, linear, linear_v, linear_1: dL/dW}).

    ``dprobs_extra`` [N, E]: a further gradient on the router probabilities (the
    load-balancing loss's). The top-k choice itself is piecewise constant: the gradient
    reaches the router only through the chosen gates' values.
    """
    xp = array_module(g)
    x, probs, ids = cache["x"], cache["probs"], cache["ids"]
    dx = xp.zeros_like(x)
    dgates = xp.zeros(ids.shape, dtype=g.dtype)
    grads = {n: xp.zeros_like(w) for n, w in
             (("linear", linear), ("linear_v", linear_v), ("linear_1", linear_1))}
    gates = cache["gates"]
    for e, (rows, slot, a, b, ga, t, y) in cache["experts"].items():
        ge = g[rows]                                                             # [n, D]
        dgates[rows, slot] = (ge * y).sum(axis=-1)
        dy = ge * gates[rows, slot][:, None]
        grads["linear_1"][e] = (ga * b).T @ dy
        dh = dy @ linear_1[e].T                                                  # [n, F]
        da, db = gelu_backward(dh * b, a, t), dh * ga
        xe = x[rows]
        grads["linear"][e], grads["linear_v"][e] = xe.T @ da, xe.T @ db
        dx[rows] += da @ linear[e].T + db @ linear_v[e].T
    dprobs = xp.zeros_like(probs)
    dprobs[xp.arange(len(ids))[:, None], ids] = dgates
    if dprobs_extra is not None:
        dprobs = dprobs + dprobs_extra
    dz = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))        # softmax
    grads["router"] = x.T @ dz
    return dx + dz @ router.T, grads


def balance_loss(probs, ids, num_experts: int):
    """The load-balancing loss of Switch Transformer (Fedus et al. 2021), a training choice:
    E * sum_e f_e P_e, f_e the share of the N*k choices that went to expert e, P_e the mean
    router probability of e. It is E * (1/E) = 1 when the load is even, up to E when every
    token picks one expert. Returns (loss, dloss/dprobs [N, E]) with f held constant (the
    choice has no gradient)."""
    xp = array_module(probs)
    N = probs.shape[0]
    f = xp.bincount(ids.ravel(), minlength=num_experts).astype(probs.dtype) / ids.size   # [E]
    loss = num_experts * float((f * probs.mean(axis=0)).sum())
    return loss, xp.broadcast_to(num_experts * f / N, probs.shape)
