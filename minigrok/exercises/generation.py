"""Exercises nucleus and kv_cache: the two steps of generating one token after another.

nucleus: the official top-p filter (keep logits >= the threshold token's, the rest -1e10).
kv_cache: store each step's keys/values at length..length+T-1 and attend over all of them;
checked by feeding a sequence in chunks (lesson 12).
"""

import numpy as np

from ..reference import attention, sampling
from .grading import (Exercise, Failed, Mistake, Property, floats, fmt_shape, fmt_array,
                      call, results, close, softmax64)


# ------------------------------------------------------------------ 8. nucleus filter

def _nucleus_cases(st, hnp):
    @st.composite
    def cases(draw):
        V = draw(st.integers(1, 8))
        return {"logits": draw(hnp.arrays(np.float32, (V,), elements=floats(st, 5))),
                "top_p": draw(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0]) |
                              st.floats(0.01, 1.0))}
    return cases()


def _nucleus_example():
    return {"logits": np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], np.float32), "top_p": 0.8}


def _kept(y):
    return np.asarray(y, np.float64) > sampling.FILTERED_LOGIT / 2


def _nucleus_top_survives(ex, fn, case):
    y = call(ex, fn, case)[0]
    if y.shape != case["logits"].shape:
        return
    best = int(np.argmax(case["logits"]))
    if not _kept(y)[best]:
        raise Failed([f"the most likely token ({best}) must always survive, whatever top_p"],
                     case, [y])


def _nucleus_all_at_one(ex, fn, case):
    one = dict(case, top_p=1.0)
    y = call(ex, fn, one)[0]
    close("top_p_filter(logits, 1.0)", y, case["logits"], 1e-6, 0, one,
           ["top_p = 1 keeps every token with its logit unchanged"])


def _nucleus_values(ex, fn, case):
    y = call(ex, fn, case)[0]
    x = case["logits"]
    if y.shape != x.shape:
        return
    kept = _kept(y)
    bad = (kept & ~np.isclose(y, x, rtol=1e-6, atol=0)) | \
          (~kept & (np.asarray(y, np.float64) != sampling.FILTERED_LOGIT))
    if bad.any():
        raise Failed(["a surviving token keeps its logit; every other token is set to -1e10 "
                      "(the official code's 'minus infinity', a finite number)",
                      f"logits: {fmt_array(x)}",
                      f"yours:  {fmt_array(np.asarray(y))}"], case, [y])


def _nucleus_top_ranked(ex, fn, case):
    y = call(ex, fn, case)[0]
    x = case["logits"]
    if y.shape != x.shape:
        return
    kept = _kept(y)
    if kept.any() and (~kept).any() and x[kept].min() < x[~kept].max():
        raise Failed(["the survivors must be the most likely tokens: every kept logit must be "
                      ">= every dropped one (ties with the last kept token are kept too)",
                      f"logits: {fmt_array(x)}",
                      f"kept:   {fmt_array(kept)}"], case, [y])


def _nucleus_mask(logits, top_p, dtype):
    s = np.sort(logits.astype(dtype))
    e = np.exp(s - s.max())
    cum = np.cumsum(e / e.sum())
    reach = dtype(1) - dtype(top_p)
    return logits.astype(dtype) >= s[np.argmax(cum >= reach)]


def _nucleus_compare(ex, got, want, case):
    x, p = case["logits"], case["top_p"]
    y = got[0]
    if y.shape != want[0].shape:
        raise Failed([f"expected shape {fmt_shape(want[0].shape)}, got {fmt_shape(y.shape)}"],
                     case)
    kept = _kept(y)
    # The official rule compares a float32 running total with 1 - top_p; a sum that lands
    # within rounding of that line may go either way, so the float64 answer counts as well.
    if not (np.array_equal(kept, _kept(want[0])) or
            np.array_equal(kept, _nucleus_mask(x, p, np.float64))):
        raise Failed(["you keep a different set of tokens than minigrok (the official rule)",
                      f"logits:        {fmt_array(x)}",
                      f"minigrok keeps {fmt_array(_kept(want[0]))}",
                      f"you keep       {fmt_array(kept)}"], case)
    close("filtered logits", np.where(kept, y, sampling.FILTERED_LOGIT),
           np.where(kept, x, sampling.FILTERED_LOGIT), 1e-6, 0, case)


def _nucleus_hf_style(logits, top_p):
    order = np.argsort(-logits, kind="stable")
    p = softmax64(logits[order].astype(np.float64))
    cum = np.cumsum(p)
    drop_sorted = cum - p >= top_p
    drop = np.zeros(len(logits), bool)
    drop[order] = drop_sorted
    return np.where(drop, np.float32(sampling.FILTERED_LOGIT), logits)


def _nucleus_stop_before(logits, top_p):
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(softmax64(logits[order].astype(np.float64)))
    keep_sorted = cum <= top_p
    keep_sorted[0] = True
    keep = np.zeros(len(logits), bool)
    keep[order] = keep_sorted
    return np.where(keep, logits, np.float32(sampling.FILTERED_LOGIT))


def _nucleus_neg_inf(logits, top_p):
    kept = _nucleus_mask(logits, top_p, np.float32)
    return np.where(kept, logits, -np.inf)


NUCLEUS = Exercise(
    "nucleus", "top_p_filter", ("logits", "top_p"), ("filtered",),
    "the official nucleus (top-p) filter",
    "12_generation.py", "minigrok/reference/sampling.py: top_p_filter",
    sampling.top_p_filter,
    _nucleus_cases, _nucleus_example, lambda c: [c["logits"].shape],
    properties=(Property("the most likely token always survives", _nucleus_top_survives),
                Property("top_p = 1 keeps every logit unchanged", _nucleus_all_at_one),
                Property("survivors keep their logit, the rest become -1e10", _nucleus_values),
                Property("survivors are the most likely tokens", _nucleus_top_ranked)),
    mistakes=(Mistake("ties with the threshold token are all kept: the official test is "
                      "logit >= the logit at the threshold, not a rank cut-off",
                      _nucleus_hf_style),
              Mistake("the token that crosses top_p stays in: keep tokens until their total "
                      "probability reaches (or passes) top_p", _nucleus_stop_before),
              Mistake("dropped tokens are set to -1e10, not -inf (the official code's "
                      "finite 'minus infinity')", _nucleus_neg_inf)),
    compare=_nucleus_compare)


# ------------------------------------------------------------------ 9. KV cache step

def _kv_reference(cache_k, cache_v, length, k_new, v_new):
    # What attention() does with a cache: write this call's keys/values at
    # [length, length + T) and attend over everything from position 0 to there.
    end = length + len(k_new)
    cache_k[length:end], cache_v[length:end] = k_new, v_new
    return cache_k[:end], cache_v[:end]


def _kv_cases(st, hnp):
    @st.composite
    def cases(draw):
        chunks = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
        N, K, G, d = sum(chunks), draw(st.integers(1, 2)), draw(st.integers(1, 2)), \
            draw(st.integers(1, 3))
        size = N + draw(st.integers(0, 2))
        el = floats(st, 4)
        return {"cache_k": np.zeros((size, K, d), np.float32),
                "cache_v": np.zeros((size, K, d), np.float32),
                "length": 0,
                "k_new": draw(hnp.arrays(np.float32, (N, K, d), elements=el)),
                "v_new": draw(hnp.arrays(np.float32, (N, K, d), elements=el)),
                "_chunks": chunks,
                "_q": draw(hnp.arrays(np.float32, (N, K, G, d), elements=el)),
                "_keep": draw(hnp.arrays(bool, (N,)))}
    return cases()


def _kv_example():
    rng = np.random.default_rng(0)
    return {"cache_k": np.zeros((8, 2, 4), np.float32), "cache_v": np.zeros((8, 2, 4), np.float32),
            "length": 0, "k_new": rng.standard_normal((6, 2, 4), dtype=np.float32),
            "v_new": rng.standard_normal((6, 2, 4), dtype=np.float32), "_chunks": [4, 1, 1],
            "_q": rng.standard_normal((6, 2, 2, 4), dtype=np.float32),
            "_keep": np.array([True, True, False, True, True, True])}


def _kv_steps(ex, fn, case):
    """Feed the sequence chunk by chunk through fn; yields (step case, keys, values)."""
    cache_k, cache_v = np.zeros_like(case["cache_k"]), np.zeros_like(case["cache_v"])
    length = 0
    for n in case["_chunks"]:
        step = {"cache_k": cache_k, "cache_v": cache_v, "length": length,
                "k_new": case["k_new"][length:length + n], "v_new": case["v_new"][length:length + n]}
        try:
            out = fn(cache_k, cache_v, length, step["k_new"].copy(), step["v_new"].copy())
        except NotImplementedError:
            raise Failed([f"{ex.function}() raised NotImplementedError"], case) from None
        except Exception as e:
            raise Failed([f"your {ex.function}() raised {type(e).__name__}: {e} (step at "
                          f"length {length} with {n} new tokens)"], case) from None
        keys, values = results(ex, out, case)
        yield step, keys, values
        length += n


def _kv_shapes_each_step(ex, fn, case):
    K, d = case["k_new"].shape[1:]
    for step, keys, values in _kv_steps(ex, fn, case):
        end = step["length"] + len(step["k_new"])
        for name, a in (("keys", keys), ("values", values)):
            if a.shape != (end, K, d):
                raise Failed([f"step at length {step['length']} with {len(step['k_new'])} new "
                              f"tokens: {name} must cover positions 0..{end - 1}, shape "
                              f"{fmt_shape((end, K, d))}, got {fmt_shape(a.shape)}"], case)


def _kv_remembers(ex, fn, case):
    for step, keys, values in _kv_steps(ex, fn, case):
        end = step["length"] + len(step["k_new"])
        if keys.shape[0] != end or values.shape[0] != end:
            return
        for name, got, want in (("keys", keys, case["k_new"][:end]),
                                ("values", values, case["v_new"][:end])):
            if not np.array_equal(np.asarray(got, np.float32), want):
                bad = int(np.argwhere(np.any(np.asarray(got, np.float32) != want,
                                             axis=(1, 2)))[0][0])
                raise Failed([f"step at length {step['length']}: {name}[{bad}] should be the "
                              f"{name[:-1]} stored for position {bad}",
                              f"expected {fmt_array(want[bad])}",
                              f"got      {fmt_array(np.asarray(got[bad]))}"],
                             case)


def _kv_attention_matches(ex, fn, case):
    """Chunked attention through the cache == attention over the whole sequence at once."""
    q, keep, v_all = case["_q"], case["_keep"], case["v_new"]
    N, K, G, d = q.shape
    full = attention.attention_weights(q, case["k_new"], keep, 0, 1.0)           # [K, G, N, N]
    want = np.einsum("kgts,skd->tkgd", full, v_all)
    for step, keys, values in _kv_steps(ex, fn, case):
        lo, n = step["length"], len(step["k_new"])
        if keys.shape != (lo + n, K, d) or values.shape != (lo + n, K, d):
            return
        p = attention.attention_weights(q[lo:lo + n], keys.astype(np.float32), keep[:lo + n], lo, 1.0)
        got = np.einsum("kgts,skd->tkgd", p, values.astype(np.float32))
        # A query that sees no key at all (only padding so far) averages every key of the
        # call, later ones included, as the official -1e30 mask does: not comparable.
        sees = np.array([keep[:lo + t + 1].any() for t in range(n)])
        if not np.allclose(got[sees], want[lo:lo + n][sees], rtol=1e-4, atol=1e-5):
            raise Failed([f"attention of positions {lo}..{lo + n - 1} using your cache differs "
                          "from attention over the whole sequence at once"], case)


def _kv_all_steps(ex, fn, case):
    """Every step's keys and values, concatenated: what a diagnosis compares."""
    out = []
    for _, keys, values in _kv_steps(ex, fn, case):
        out += [keys, values]
    return out


def _kv_whole_cache(cache_k, cache_v, length, k_new, v_new):
    end = length + len(k_new)
    cache_k[length:end], cache_v[length:end] = k_new, v_new
    return cache_k, cache_v


def _kv_at_zero(cache_k, cache_v, length, k_new, v_new):
    n = len(k_new)
    cache_k[:n], cache_v[:n] = k_new, v_new
    return cache_k[:length + n], cache_v[:length + n]


def _kv_only_new(cache_k, cache_v, length, k_new, v_new):
    return k_new, v_new


KV_CACHE = Exercise(
    "kv_cache", "kv_cache_step", ("cache_k", "cache_v", "length", "k_new", "v_new"),
    ("keys", "values"),
    "one step of the KV cache: store the new keys/values, return everything to attend to",
    "12_generation.py", "minigrok/reference/attention.py: attention (its cache branch) and new_cache",
    _kv_reference,
    _kv_cases, _kv_example,
    lambda c: [(c["length"] + len(c["k_new"]),) + c["k_new"].shape[1:]] * 2,
    properties=(Property("each step returns keys and values for positions 0..length+T-1",
                         _kv_shapes_each_step),
                Property("each step remembers what earlier steps stored", _kv_remembers),
                Property("attention through your cache equals attention over the whole "
                         "sequence", _kv_attention_matches)),
    mistakes=(Mistake("return only the filled part, cache[:length + T]: the rest of the "
                      "cache is empty", _kv_whole_cache),
              Mistake("write the new keys at positions length..length+T-1, not at 0",
                      _kv_at_zero),
              Mistake("attention must see the cached keys too: return everything up to "
                      "length + T, not only the new ones", _kv_only_new)),
    rtol=0, atol=0, run=_kv_all_steps)
