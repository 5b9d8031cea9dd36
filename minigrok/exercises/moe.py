"""Exercises router_top2 and expert_ffn: the mixture of experts.

router_top2: softmax over all experts, the top k (lower index wins a tie), gates not
renormalised (lesson 08). expert_ffn: (gelu_tanh(x W) * (x V)) W1, token by token (lesson 09).
"""

import math

import numpy as np

from ..reference import moe
from .grading import (Exercise, Failed, Mistake, Property, floats, fmt_shape, fmt_array,
                      call, close, softmax64)


# ------------------------------------------------------------------ 5. router top-2

def _router_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D, E = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 8))
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=floats(st, 3))),
                "router": draw(hnp.arrays(np.float32, (D, E), elements=floats(st, 3))),
                "k": draw(st.integers(1, min(3, E)))}
    return cases()


def _router_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 6), dtype=np.float32),
            "router": rng.standard_normal((6, 8), dtype=np.float32), "k": 2}


def _router_softmax(ex, fn, case):
    probs = call(ex, fn, case)[0]
    if probs.shape != ex.shapes(case)[0]:
        return
    sums = probs.astype(np.float64).sum(-1)
    if not (np.all(probs >= 0) and np.allclose(sums, 1, atol=1e-4)):
        raise Failed(["probs must be a softmax over all E experts: each row >= 0, summing to 1",
                      f"row sums: {fmt_array(sums)}"], case)


def _router_top(ex, fn, case):
    probs, ids, gates = call(ex, fn, case)
    if ids.shape != ex.shapes(case)[1] or probs.shape != ex.shapes(case)[0]:
        return
    want = moe.route(case["x"], case["router"], case["k"])[0].astype(np.float64)
    for t in range(ids.shape[0]):
        row = ids[t].astype(np.int64)
        if len(set(row.tolist())) != len(row) or row.min() < 0 or row.max() >= probs.shape[1]:
            raise Failed([f"token {t}: expert_ids {row.tolist()} must be {len(row)} different "
                          f"experts in [0, {probs.shape[1]})"], case)
        chosen = want[t, row]
        rest = np.delete(want[t], row)
        if np.any(np.diff(chosen) > 1e-6) or (rest.size and chosen.min() < rest.max() - 1e-6):
            raise Failed([f"token {t}: expert_ids must be the {len(row)} most probable experts, "
                          f"best first; you chose {row.tolist()}",
                          f"probabilities: {fmt_array(want[t])}"], case)


def _router_gates(ex, fn, case):
    probs, ids, gates = call(ex, fn, case)
    if gates.shape != ids.shape or probs.shape != ex.shapes(case)[0]:
        return
    ids = ids.astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= probs.shape[1]:
        return
    picked = np.take_along_axis(probs, ids, axis=-1)
    if not np.allclose(gates, picked, rtol=1e-5, atol=1e-6):
        raise Failed(["gates must be the chosen experts' softmax probabilities as they are, "
                      "NOT renormalised to sum to 1 (Grok-1 keeps them summing to less than 1)",
                      f"probs at your expert_ids: {fmt_array(picked)}",
                      f"your gates:               {fmt_array(gates)}"], case)


def _router_compare(ex, got, want, case):
    close("probs", got[0], want[0], ex.rtol, ex.atol, case)
    p = want[0].astype(np.float64)
    ids_got, ids_want = got[1].astype(np.int64), want[1]
    if ids_got.shape != ids_want.shape:
        raise Failed([f"expert_ids: expected shape {fmt_shape(ids_want.shape)}, got "
                      f"{fmt_shape(ids_got.shape)}"], case)
    for t in range(len(ids_want)):
        if np.array_equal(ids_got[t], ids_want[t]):
            continue
        # A different choice is only wrong where the probabilities really differ, or on an
        # exact tie (which jax.lax.top_k, and so Grok-1, gives to the lower index).
        pg, pw = p[t, ids_got[t]], p[t, ids_want[t]]
        exact_tie = np.array_equal(pg, pw)
        if exact_tie or not np.allclose(pg, pw, rtol=1e-6, atol=0):
            raise Failed([f"expert_ids of token {t}: expected {ids_want[t].tolist()}, got "
                          f"{ids_got[t].tolist()}",
                          f"probabilities: {fmt_array(p[t])}"] +
                         (["on a tie the lower expert index wins, as jax.lax.top_k does"]
                          if exact_tie else []), case)
    close("gates", got[2], want[2], ex.rtol, ex.atol, case)


def _route_variant(x, router, k, renorm=False, high_ties=False):
    logits = x.astype(np.float32) @ router.astype(np.float32)
    probs = softmax64(logits.astype(np.float64)).astype(np.float32)
    if high_ties:
        ids = np.argsort(probs, axis=-1, kind="stable")[:, ::-1][:, :k]
    else:
        ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    gates = np.take_along_axis(probs, ids, -1)
    if renorm:
        gates = gates / gates.sum(-1, keepdims=True)
    return probs, ids, gates


ROUTER_TOP2 = Exercise(
    "router_top2", "route", ("x", "router", "k"), ("probs", "expert_ids", "gates"),
    "the router: softmax over all experts, top-k, gates not renormalised",
    "08_router.py", "minigrok/reference/moe.py: route",
    moe.route,
    _router_cases, _router_example,
    lambda c: [(c["x"].shape[0], c["router"].shape[1]), (c["x"].shape[0], c["k"]),
               (c["x"].shape[0], c["k"])],
    properties=(Property("probs is a softmax over all experts", _router_softmax),
                Property("expert_ids are the k most probable experts, best first", _router_top),
                Property("gates are the chosen probabilities, not renormalised", _router_gates)),
    # (A softmax over the k chosen logits only is the same function as renormalised
    # gates, exp(l_i) / sum over the chosen of exp(l_j): one mistake, one hint for both.)
    mistakes=(Mistake("your gates sum to 1: renormalised, or a softmax over the k chosen "
                      "logits only (the same numbers); Grok-1's softmax runs over all "
                      "experts and the gates are those probabilities as they are",
                      lambda *a: _route_variant(*a, renorm=True)),
              Mistake("on a tie the LOWER expert index wins (jax.lax.top_k); reversing an "
                      "ascending sort gives ties to the higher one",
                      lambda *a: _route_variant(*a, high_ties=True))),
    rtol=1e-5, atol=1e-6, compare=_router_compare)


# ------------------------------------------------------------------ 6. expert FFN

def _expert_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D, F = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
        el = floats(st, 2)
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=el)),
                "w": draw(hnp.arrays(np.float32, (D, F), elements=el)),
                "v": draw(hnp.arrays(np.float32, (D, F), elements=el)),
                "w1": draw(hnp.arrays(np.float32, (F, D), elements=el))}
    return cases()


def _expert_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((3, 4), dtype=np.float32),
            "w": rng.standard_normal((4, 6), dtype=np.float32),
            "v": rng.standard_normal((4, 6), dtype=np.float32),
            "w1": rng.standard_normal((6, 4), dtype=np.float32)}


def _expert_per_token(ex, fn, case):
    y = call(ex, fn, case)[0]
    if y.shape != case["x"].shape:
        return
    for t in range(case["x"].shape[0]):
        alone = call(ex, fn, dict(case, x=case["x"][t:t + 1]))[0]
        if alone.shape != (1, case["x"].shape[1]) or \
                not np.allclose(alone[0], y[t], rtol=1e-4, atol=1e-5):
            raise Failed([f"an expert treats every token on its own: row {t} of expert(x) "
                          f"must equal expert(x[{t}:{t + 1}])",
                          f"in the batch: {fmt_array(y[t])}",
                          f"alone:        {fmt_array(np.asarray(alone).ravel())}"],
                         case, [y])


def _erf(x):
    """erf to ~1.5e-7 (Abramowitz and Stegun 7.1.26), vectorised."""
    x = np.asarray(x, np.float64)
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))


def _expert_variant(x, w, v, w1, act="tanh", swap=False, outer=False):
    x = x.astype(np.float64)
    a, b = x @ w, x @ v
    if swap:
        a, b = b, a
    f = {"tanh": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))),
         "erf": lambda z: 0.5 * z * (1 + _erf(z / math.sqrt(2))),
         "silu": lambda z: z / (1 + np.exp(-z)),
         "relu": lambda z: np.maximum(z, 0)}[act]
    h = f(a * b) if outer else f(a) * b
    return h @ w1


EXPERT_FFN = Exercise(
    "expert_ffn", "expert", ("x", "w", "v", "w1"), ("out",),
    "one expert's feed-forward: (gelu(x W) * (x V)) W1",
    "09_experts.py", "minigrok/reference/moe.py: expert (and gelu)",
    moe.expert,
    _expert_cases, _expert_example, lambda c: [c["x"].shape],
    properties=(Property("every token is processed on its own", _expert_per_token),),
    mistakes=(Mistake("Grok-1's GELU is the tanh approximation (jax.nn.gelu's default), "
                      "not the exact erf form", lambda *a: _expert_variant(*a, act="erf")),
              Mistake("the GELU goes on x @ w (moe/linear), not on x @ v (moe/linear_v)",
                      lambda *a: _expert_variant(*a, swap=True)),
              Mistake("that is SiLU (Llama, Mixtral); Grok-1 uses GELU",
                      lambda *a: _expert_variant(*a, act="silu")),
              Mistake("that is ReLU; Grok-1 uses GELU (tanh approximation)",
                      lambda *a: _expert_variant(*a, act="relu")),
              Mistake("apply the GELU to x @ w alone, then multiply by x @ v",
                      lambda *a: _expert_variant(*a, outer=True))),
    rtol=1e-4, atol=1e-5)
