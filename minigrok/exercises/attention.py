"""Exercises softcap_attention and gqa: Grok-1's attention weights and kv-head grouping.

softcap_attention: 30 * tanh(q.k * multiplier / 30), causal and padding masks with -1e30,
softmax (lesson 07). gqa: which kv head each query head reads (h // G), checked by running
plain multi-head attention over the student's expanded keys (lesson 07).
"""

import numpy as np

from ..reference import attention
from .grading import Exercise, Failed, Mistake, Property, floats, fmt_array, call


# ------------------------------------------------------------------ 3. soft-capped attention

def _attn_cases(st, hnp):
    @st.composite
    def cases(draw):
        K, G, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
        T, offset = draw(st.integers(1, 4)), draw(st.integers(0, 3))
        S = offset + T
        return {"q": draw(hnp.arrays(np.float32, (T, K, G, d), elements=floats(st, 8))),
                "k": draw(hnp.arrays(np.float32, (S, K, d), elements=floats(st, 8))),
                "keep": draw(hnp.arrays(bool, (S,))),
                "offset": offset,
                "multiplier": draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))}
    return cases()


def _attn_example():
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((3, 2, 2, 4), dtype=np.float32) * 4,
            "k": rng.standard_normal((5, 2, 4), dtype=np.float32) * 4,
            "keep": np.array([True, False, True, True, True]), "offset": 2, "multiplier": 0.5}


def _visible(case):
    """[T, S] bool: which keys each query may see (causal and not padding)."""
    T, S = case["q"].shape[0], case["k"].shape[0]
    causal = np.arange(S)[None, :] <= case["offset"] + np.arange(T)[:, None]
    return causal & case["keep"][None, :]


def _attn_distribution(ex, fn, case):
    p = call(ex, fn, case)[0]
    if p.shape != ex.shapes(case)[0]:
        return
    sums = p.astype(np.float64).sum(-1)
    if not (np.all(p >= 0) and np.allclose(sums, 1, atol=1e-4)):
        raise Failed(["every row (one query, one head) must be a probability distribution: "
                      "all >= 0 and summing to 1",
                      f"row sums: {fmt_array(sums)}",
                      "(a NaN here usually means masking with -inf: use -1e30 as the "
                      "official code does)" if np.isnan(sums).any() else ""], case, [p])


def _attn_masked(ex, fn, case):
    p = call(ex, fn, case)[0]
    if p.shape != ex.shapes(case)[0]:
        return
    vis = _visible(case)
    rows = vis.any(-1)                                # [T]: queries that see some key
    leak = (~vis)[None, None] & rows[None, None, :, None] & (p > 1e-6)
    if leak.any():
        _, _, t, s = (int(i) for i in np.argwhere(leak)[0])
        why = "is later than the query (causal mask)" if s > case["offset"] + t else \
            "is padding (keep is False)"
        raise Failed([f"query {t} (position {case['offset'] + t}) gives weight "
                      f"{float(p[(*np.argwhere(leak)[0][:2], t, s)]):.4g} to key {s}, which {why}: "
                      "it must get exactly 0",
                      f"keep = {fmt_array(case['keep'])}, offset = {case['offset']}"],
                     case, [p])


def _attn_variant(q, k, keep, offset, multiplier, cap=True, cap_first=False, fill=-1e30,
                  use_keep=True, use_offset=True):
    T, S = q.shape[0], k.shape[0]
    s = np.einsum("tkgd,skd->kgts", q.astype(np.float64), k)
    if cap_first:
        s = 30 * np.tanh(s / 30) * multiplier
    else:
        s = s * multiplier
        if cap:
            s = 30 * np.tanh(s / 30)
    causal = np.arange(S)[None, :] <= (offset if use_offset else 0) + np.arange(T)[:, None]
    mask = causal & keep[None, :] if use_keep else causal
    s = np.where(mask, s, fill)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


SOFTCAP_ATTENTION = Exercise(
    "softcap_attention", "attention_weights", ("q", "k", "keep", "offset", "multiplier"),
    ("probs",),
    "soft-capped attention scores, causal and padding masks, softmax",
    "07_attention.py", "minigrok/reference/attention.py: attention_weights",
    attention.attention_weights,
    _attn_cases, _attn_example,
    lambda c: [(c["q"].shape[1], c["q"].shape[2], c["q"].shape[0], c["k"].shape[0])],
    properties=(Property("every row is a probability distribution", _attn_distribution),
                Property("later keys and padding keys get exactly zero weight", _attn_masked)),
    mistakes=(Mistake("scores are soft-capped: 30 * tanh(score / 30), after the multiplier",
                      lambda *a: _attn_variant(*a, cap=False)),
              Mistake("the multiplier comes first: 30 * tanh(q.k * multiplier / 30); you "
                      "capped before multiplying", lambda *a: _attn_variant(*a, cap_first=True)),
              Mistake("mask with -1e30 as the official code does, not -inf: a query that "
                      "sees no key at all must get a uniform row, not NaN",
                      lambda *a: _attn_variant(*a, fill=-np.inf)),
              Mistake("padding keys (keep False) must be masked too, not only later ones",
                      lambda *a: _attn_variant(*a, use_keep=False)),
              Mistake("query t sits at position offset + t: the causal test is "
                      "key <= offset + t", lambda *a: _attn_variant(*a, use_offset=False))),
    rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ 4. GQA grouping

def _gqa_reference(k, num_q_heads):
    # attention.py reshapes the queries to [T, K, G, d]: query head h is slot h % G of kv
    # group h // G. Written out per head, that is this gather.
    G = num_q_heads // k.shape[1]
    return k[:, np.arange(num_q_heads) // G]


def _gqa_cases(st, hnp):
    @st.composite
    def cases(draw):
        S, K, G, d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                      draw(st.integers(1, 3)))
        return {"k": draw(hnp.arrays(np.float32, (S, K, d), elements=floats(st, 4))),
                "num_q_heads": K * G,
                "_q": draw(hnp.arrays(np.float32, (S, K * G, d), elements=floats(st, 4)))}
    return cases()


def _gqa_example():
    rng = np.random.default_rng(0)
    return {"k": rng.standard_normal((3, 2, 4), dtype=np.float32), "num_q_heads": 6,
            "_q": rng.standard_normal((3, 6, 4), dtype=np.float32)}


def _gqa_attention_matches(ex, fn, case):
    """Plain multi-head attention over the expanded keys == minigrok's grouped attention."""
    k, H, q = case["k"], case["num_q_heads"], case["_q"]
    S, K, d = k.shape
    expanded = call(ex, fn, case)[0]
    if expanded.shape != (S, H, d):
        return
    keep = np.ones(S, bool)
    grouped = attention.attention_weights(q.reshape(S, K, H // K, d), k, keep, 0, 1.0)
    per_head = attention.attention_weights(q.reshape(S, H, 1, d), expanded.astype(np.float32),
                                           keep, 0, 1.0)
    grouped, per_head = grouped.reshape(H, S, S), per_head.reshape(H, S, S)
    if not np.allclose(per_head, grouped, rtol=1e-4, atol=1e-6):
        h = int(np.argmax(np.abs(per_head - grouped).reshape(H, -1).max(-1)))
        raise Failed([f"multi-head attention using your expanded keys differs from minigrok's "
                      f"grouped attention, first at query head {h} (it should read kv head "
                      f"{h // (H // K)} of {K})"], case, [expanded])


def _gqa_tiled(k, num_q_heads):
    return np.tile(k, (1, num_q_heads // k.shape[1], 1))


def _gqa_first(k, num_q_heads):
    return np.repeat(k[:, :1], num_q_heads, axis=1)


GQA = Exercise(
    "gqa", "expand_kv", ("k", "num_q_heads"), ("expanded",),
    "grouped-query attention: which kv head each query head reads",
    "07_attention.py", "minigrok/reference/attention.py: attention (q reshaped to [T, K, G, d])",
    _gqa_reference,
    _gqa_cases, _gqa_example,
    lambda c: [(c["k"].shape[0], c["num_q_heads"], c["k"].shape[2])],
    properties=(Property("multi-head attention over your expanded keys equals minigrok's "
                         "grouped attention", _gqa_attention_matches),),
    mistakes=(Mistake("query head h reads kv head h // G (consecutive query heads share a "
                      "kv head), not h % K: use repeat, not tile", _gqa_tiled),
              Mistake("every query head reads kv head 0", _gqa_first)),
    rtol=0, atol=0)
