"""Grouped-query self-attention with Grok-1's soft-capped logits, masks and KV cache.

H query heads share K key/value heads: query head h reads kv head h // G (G = H // K),
because the official code reshapes the queries to [T, K, G, d]. Scores are
``q.k * attn_output_multiplier`` (1/sqrt(d), applied once), then soft-capped to
``30 * tanh(s / 30)``, masked, and soft-maxed in float32.

Masking follows the official code exactly: a query sees a key when the key is not later
(causal) and the key's token is not padding (id 0). Masked scores are set to -1e30, not
-inf, so a query that sees no key at all (a pad token with only pads before it) gets a
uniform average over every key in the call, later ones included; only that pad position's
own output is affected, since no one attends to a pad.
"""

from . import quant
from .rope import apply_rope
from .xp import array_module

SOFT_CAP = 30.0
MASKED = -1e30
# The scores of one call are [H, T, S] float32: 13 GB for an 8192-token prompt on Grok-1,
# several times over while they are capped, masked and soft-maxed. ``context`` therefore takes
# the queries in blocks whose scores stay under this many bytes (its ``score_bytes``); each
# row's numbers are the same as in one piece, up to float32 rounding. (Above 32 MB every
# temporary would be a fresh mmap from glibc, its pages faulted in anew: 20-30% slower here.)
SCORE_BYTES = 32 << 20


def new_cache(num_layers: int, size: int, num_kv_heads: int, key_size: int):
    """An empty KV cache for ``size`` positions: the values ``attention`` reads and fills.

    Per layer l: k[l], v[l]: [S, K, d] float32 (rotated keys, values), keep[l]: [S] bool (not
    padding), each made by the layer's first call on the layer's own device (a model split
    over several GPUs keeps each layer's cache beside its weights). length: positions filled
    so far (the next token's position).
    """
    return {"k": [None] * num_layers, "v": [None] * num_layers, "keep": [None] * num_layers,
            "shape": (size, num_kv_heads, key_size), "length": 0}


def layer_cache(cache, index: int, xp):
    """(k [S, K, d], v [S, K, d], keep [S]) of layer ``index``'s cache, zeros made on first use."""
    if cache["k"][index] is None:
        for name, like in (("k", xp.float32), ("v", xp.float32), ("keep", bool)):
            shape = cache["shape"] if name != "keep" else cache["shape"][:1]
            cache[name][index] = xp.zeros(shape, dtype=like)
    return cache["k"][index], cache["v"][index], cache["keep"][index]


def attention_weights(q, k, keep, offset: int, multiplier: float):
    """Soft-capped, masked, normalised scores.

    q: [T, K, G, d] rotated queries at positions offset..offset+T-1; k: [S, K, d] rotated keys
    at positions 0..S-1; keep: [S] bool -> probabilities [K, G, T, S] float32.
    """
    xp = array_module(q)
    T, S = q.shape[0], k.shape[0]
    # einsum("tkgd,skd->kgts", q, k) as a batched matrix product (BLAS: ~15x faster here):
    # [K, G, T, d] @ [K, 1, d, S], each query head against its kv head's keys.
    scores = (q.transpose(1, 2, 0, 3) @ k.transpose(1, 2, 0)[:, None]) * xp.float32(multiplier)
    scores = xp.float32(SOFT_CAP) * xp.tanh(scores / xp.float32(SOFT_CAP))
    causal = xp.arange(S)[None, :] <= (offset + xp.arange(T))[:, None]      # [T, S]
    scores = xp.where(causal & keep[None, :], scores, xp.float32(MASKED))
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = xp.exp(scores)
    return p / p.sum(axis=-1, keepdims=True)


def context(q, k, v, keep, offset: int, multiplier: float, probs: list | None = None,
            score_bytes: int = SCORE_BYTES):
    """The attention-weighted values, computed a block of queries at a time.

    q: [T, K, G, d] rotated queries at positions offset..offset+T-1; k, v: [S, K, d] rotated
    keys and values at 0..S-1; keep: [S] bool -> [T, K, G, d] float32. ``probs``, when given,
    receives each block's probabilities [K, G, b, S]. A block's scores take at most
    ``score_bytes`` (at least one query a block).
    """
    xp = array_module(q)
    T, K, G, d = q.shape
    S = k.shape[0]
    rows = max(1, score_bytes // (K * G * S * 4))                      # queries per block
    first = int(keep.argmax()) if keep.any() else S                   # the first non-pad key
    v = v.transpose(1, 0, 2)[:, None]                                 # [K, 1, S, d]
    out = xp.empty((T, K, G, d), dtype=xp.float32)
    for t in range(0, T, rows):
        # No query in a block sees a key after the block's last one, so the block reads keys
        # [0, end) only: half the work of a prompt. Except where a query comes before the
        # first non-pad key: it sees no key at all, and the official softmax then spreads it
        # evenly over every key of the call (see the module's docstring).
        end = min(S, offset + t + rows) if offset + t >= first else S
        p = attention_weights(q[t:t + rows], k[:end], keep[:end], offset + t, multiplier)
        # einsum("kgts,skd->tkgd", p, v): [K, G, b, end] @ [K, 1, end, d] -> [b, K, G, d]
        out[t:t + rows] = (p @ v[:, :, :end]).transpose(2, 0, 1, 3)
        if probs is not None:            # the keys after ``end`` have probability exactly 0
            probs.append(xp.pad(p, ((0, 0), (0, 0), (0, 0), (0, S - end))))
    return out


def attention(x, query, key, value, linear, *, num_q_heads: int, num_kv_heads: int,
              key_size: int, multiplier: float, keep, offset: int = 0, cache=None, index: int = 0,
              trace: dict | None = None, score_bytes: int = SCORE_BYTES):
    """Self-attention of x over itself and, with a cache, over everything cached before it.

    x: [T, D] (already normed), tokens at positions offset..offset+T-1; keep: [T] bool, which
    of those tokens are not padding; query/key/value/linear: the layer's weights
    ([D, H*d], [D, K*d], [D, K*d], [H*d, D]). With a cache, the new keys/values are written
    at [offset, offset+T) of layer ``index``'s cache and all of [0, offset+T) is attended.
    Returns [T, D] float32.

    ``trace``, when given, receives the intermediates (and nothing else changes): q [T, H, d]
    and k [T, K, d] after RoPE, v [T, K, d] (this call's tokens only), attn_probs [H, T, S]
    (query head h = kv head h // G, group slot h % G) and attn_context [T, H*d] (weights @ v,
    heads flattened, before the output projection). ``score_bytes``: see context.
    """
    return projected_attention(
        quant.linear(x, query), quant.linear(x, key), quant.linear(x, value), linear,
        num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, key_size=key_size,
        multiplier=multiplier, keep=keep, offset=offset, cache=cache, index=index, trace=trace,
        score_bytes=score_bytes)


def projected_attention(q, k, v, linear, *, num_q_heads: int, num_kv_heads: int, key_size: int,
                        multiplier: float, keep, offset: int = 0, cache=None, index: int = 0,
                        trace: dict | None = None, score_bytes: int = SCORE_BYTES):
    """attention after its three projections: q [T, H*d], k, v [T, K*d] (x times query,
    key, value) -> [T, D] float32, with attention's other arguments. (The engine's CPU
    decode step makes the three products in one go and continues here.)"""
    xp = array_module(q)
    T, G = q.shape[0], num_q_heads // num_kv_heads
    positions = offset + xp.arange(T)
    q = apply_rope(q.reshape(T, num_q_heads, key_size), positions)                 # [T, H, d]
    k = apply_rope(k.reshape(T, num_kv_heads, key_size), positions)                # [T, K, d]
    v = v.reshape(T, num_kv_heads, key_size)                                       # [T, K, d]
    if trace is not None:
        trace.update(q=q, k=k, v=v)
    if cache is not None:
        end = offset + T
        cache_k, cache_v, cache_keep = layer_cache(cache, index, xp)
        cache_k[offset:end], cache_v[offset:end], cache_keep[offset:end] = k, v, keep
        k, v, keep = cache_k[:end], cache_v[:end], cache_keep[:end]
    elif offset:
        raise ValueError("attention: a non-zero offset needs the cache holding the earlier keys")
    probs = [] if trace is not None else None
    out = context(q.reshape(T, num_kv_heads, G, key_size), k, v, keep, offset, multiplier, probs,
                  score_bytes)
    out = out.reshape(T, num_q_heads * key_size)                                    # [T, H*d]
    if trace is not None:
        trace.update(attn_probs=xp.concatenate(probs, axis=2).reshape(num_q_heads, T, -1),
                     attn_context=out)
    return quant.linear(out, linear)                                                # [T, D]
