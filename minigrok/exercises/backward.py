"""Exercises rmsnorm_backward and softcap_attention_backward: two backward passes of lesson 16.

Each is graded first by central finite differences of minigrok's own forward in float64 (the
gradient must be the derivative of the forward the other exercises check, whatever the
code), then against minigrok's gradient. The model answers here are the formulas of
minigrok/training/gradients.py (rms_norm_backward; the softmax-and-cap part of
attention_backward), written for the exercises' plain arrays: the grader imports only the
reference.

rmsnorm_backward: y = x r s with r = (mean(x^2) + eps)^-1/2; dL/dx = r (g s - xn mean(g s xn))
with xn = x r, dL/ds = sum over tokens of g xn.
softcap_attention_backward: out = p v with p = softmax(mask(30 tanh(q.k m / 30))); the
gradient goes back through the weighted sum, the softmax, the cap and the multiplier, and a
kv head's keys and values collect it from all G query heads that read them.
"""

import numpy as np

from ..reference import attention
from ..reference.rmsnorm import EPS
from .grading import Exercise, Failed, Mistake, Property, call, floats, fmt_array

# Central differences in float64: the truncation error is O(STEP^2) and the rounding error
# O(2^-52 / STEP) times the size of the loss, both far below FD_RTOL at this step.
STEP = 1e-6
FD_RTOL = 1e-4


def _directional_check(ex, fn, case, loss, inputs, grad_names):
    """Failed unless the student's gradients, dotted with a random direction, equal the
    central difference of ``loss`` along it. ``inputs``: the case's arrays that are
    differentiated, in the order of the student's outputs."""
    case64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
              else v for k, v in case.items()}
    got = call(ex, fn, case64)
    if any(g.shape != case[n].shape for g, n in zip(got, inputs)):
        return                                           # the shape property reports it
    rng = np.random.default_rng(0)
    direction = {n: rng.standard_normal(case[n].shape) for n in inputs}

    def moved(sign):
        return loss({**case64, **{n: case64[n] + sign * STEP * direction[n] for n in inputs}})

    numeric = (moved(1) - moved(-1)) / (2 * STEP)
    analytic = sum(float((g.astype(np.float64) * direction[n]).sum()) for g, n in zip(got, inputs))
    size = sum(float(np.abs(g.astype(np.float64) * direction[n]).sum())
               for g, n in zip(got, inputs)) + abs(numeric)
    if not abs(analytic - numeric) <= FD_RTOL * (size + 1e-3):
        raise Failed([f"your gradients disagree with a central finite difference of the "
                      f"forward (step {STEP:g}, float64): along a random direction the loss "
                      f"changes at {numeric:.6g} per unit, your {', '.join(grad_names)} say "
                      f"{analytic:.6g}"], case, got)


# ------------------------------------------------------------------ rmsnorm_backward

def _rms_norm64(x, scale, eps=EPS):
    """reference.rmsnorm.rms_norm's formula, in the inputs' precision (float64 here: the
    reference computes in float32, too coarse for a finite difference)."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def _rms_backward(x, scale, grad, eps=EPS):
    x, scale, grad = (np.asarray(a, np.float64) for a in (x, scale, grad))
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)                     # [T, 1]
    xn = x * r                                                                   # [T, D]
    gs = grad * scale                                                            # [T, D]
    dx = r * (gs - xn * (gs * xn).mean(-1, keepdims=True))                       # [T, D]
    return dx.astype(np.float32), (grad * xn).sum(0).astype(np.float32)


def _rmsb_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=floats(st, 4))),
                "scale": draw(hnp.arrays(np.float32, (D,), elements=floats(st, 2))),
                "grad": draw(hnp.arrays(np.float32, (T, D), elements=floats(st, 2)))}
    return cases()


def _rmsb_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((3, 8), dtype=np.float32),
            "scale": rng.standard_normal(8, dtype=np.float32),
            "grad": rng.standard_normal((3, 8), dtype=np.float32)}


def _rmsb_finite_differences(ex, fn, case):
    _directional_check(ex, fn, case,
                       lambda c: float((_rms_norm64(c["x"], c["scale"]) * c["grad"]).sum()),
                       ("x", "scale"), ("dx", "dscale"))


def _rmsb_r_constant(x, scale, grad, eps=EPS):
    x = x.astype(np.float64)
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return (grad * scale * r).astype(np.float32), (grad * x * r).sum(0).astype(np.float32)


def _rmsb_sum_not_mean(x, scale, grad, eps=EPS):
    x = x.astype(np.float64)
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    xn, gs = x * r, grad * scale
    return (r * (gs - xn * (gs * xn).sum(-1, keepdims=True))).astype(np.float32), \
        (grad * xn).sum(0).astype(np.float32)


def _rmsb_scale_per_token(x, scale, grad, eps=EPS):
    dx, _ = _rms_backward(x, scale, grad, eps)
    xn = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)
    return dx, (grad * xn).astype(np.float32)


RMSNORM_BACKWARD = Exercise(
    "rmsnorm_backward", "rms_norm_backward", ("x", "scale", "grad"), ("dx", "dscale"),
    "RMSNorm's backward pass: the gradients of the input and of the scale",
    "16_training.py", "minigrok/training/gradients.py: rms_norm_backward",
    _rms_backward, _rmsb_cases, _rmsb_example,
    lambda c: [c["x"].shape, c["scale"].shape],
    properties=(Property("dx and dscale are the derivatives of rms_norm (central finite "
                         "differences, float64)", _rmsb_finite_differences),),
    mistakes=(Mistake("r = 1 / rms(x) depends on x too: dx = r (g s - xn mean(g s xn)); "
                      "treating r as a constant leaves out the second term",
                      _rmsb_r_constant),
              Mistake("the second term is the mean over D of g s xn (from dr/dx_j = "
                      "-r^3 x_j / D), not the sum", _rmsb_sum_not_mean),
              Mistake("every token is multiplied by the same scale: sum its gradient over "
                      "the tokens, dscale = sum_t g xn", _rmsb_scale_per_token)),
    rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ softcap_attention_backward

def _context64(q, k, v, keep, offset, multiplier):
    """reference.attention.context in the inputs' precision: attention_weights (which keeps
    float64) times the values. q [T, K, G, d], k, v [S, K, d] -> [T, K, G, d]."""
    p = attention.attention_weights(q, k, keep, offset, multiplier)              # [K, G, T, S]
    return np.einsum("kgts,skd->tkgd", p, v)


def _attention_backward(q, k, v, keep, offset, multiplier, grad, cap_derivative=True,
                        subtract=True, sum_heads=True, multiply=True):
    """The model answer (and, with a flag off, a mistake): dL/dq, dL/dk, dL/dv."""
    q, k, v, grad = (np.asarray(a, np.float64) for a in (q, k, v, grad))
    T, S = q.shape[0], k.shape[0]
    s = np.einsum("tkgd,skd->kgts", q, k) * multiplier                           # [K, G, T, S]
    t = np.tanh(s / attention.SOFT_CAP)
    causal = np.arange(S)[None, :] <= offset + np.arange(T)[:, None]
    visible = causal & keep[None, :]                                             # [T, S]
    p = attention.attention_weights(q, k, keep, offset, multiplier)              # [K, G, T, S]
    dp = np.einsum("tkgd,skd->kgts", grad, v)                                    # [K, G, T, S]
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) if subtract else p * dp
    ds = ds * (1 - t * t) if cap_derivative else ds                             # through the cap
    ds = np.where(visible, ds, 0.0)                      # a masked score is a constant
    ds = ds * multiplier if multiply else ds
    dq = np.einsum("kgts,skd->tkgd", ds, k)
    dk = np.einsum("kgts,tkgd->skgd", ds, q)                                     # [S, K, G, d]
    dv = np.einsum("kgts,tkgd->skgd", p, grad)
    reduce = (lambda a: a.sum(2)) if sum_heads else (lambda a: a.mean(2))        # over G
    return dq.astype(np.float32), reduce(dk).astype(np.float32), reduce(dv).astype(np.float32)


def _attnb_cases(st, hnp):
    @st.composite
    def cases(draw):
        K, G, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
        T, offset = draw(st.integers(1, 3)), draw(st.integers(0, 2))
        S = offset + T
        return {"q": draw(hnp.arrays(np.float32, (T, K, G, d), elements=floats(st, 6))),
                "k": draw(hnp.arrays(np.float32, (S, K, d), elements=floats(st, 6))),
                "v": draw(hnp.arrays(np.float32, (S, K, d), elements=floats(st, 2))),
                "keep": draw(hnp.arrays(bool, (S,))),
                "offset": offset,
                "multiplier": draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
                "grad": draw(hnp.arrays(np.float32, (T, K, G, d), elements=floats(st, 2)))}
    return cases()


def _attnb_example():
    rng = np.random.default_rng(0)
    # scores up to ~60: the cap bends them (30 tanh(s / 30)), so its derivative matters
    return {"q": rng.standard_normal((3, 2, 2, 4), dtype=np.float32) * 4,
            "k": rng.standard_normal((5, 2, 4), dtype=np.float32) * 4,
            "v": rng.standard_normal((5, 2, 4), dtype=np.float32),
            "keep": np.array([True, False, True, True, True]), "offset": 2, "multiplier": 1.0,
            "grad": rng.standard_normal((3, 2, 2, 4), dtype=np.float32)}


def _attnb_finite_differences(ex, fn, case):
    _directional_check(ex, fn, case,
                       lambda c: float((_context64(c["q"], c["k"], c["v"], c["keep"],
                                                   c["offset"], c["multiplier"])
                                        * c["grad"]).sum()),
                       ("q", "k", "v"), ("dq", "dk", "dv"))


def _attnb_masked_keys(ex, fn, case):
    # A key no query may see (padding, or later than every query) gets no gradient: its score
    # is replaced by the constant -1e30 everywhere. (Its value still gets one when some query
    # sees no key at all: the official softmax then spreads that query evenly over every key.)
    dq, dk, dv = call(ex, fn, case)
    if dk.shape != case["k"].shape or dv.shape != case["v"].shape:
        return
    T, S = case["q"].shape[0], case["k"].shape[0]
    visible = (np.arange(S)[None, :] <= case["offset"] + np.arange(T)[:, None]) \
        & case["keep"][None, :]                                                   # [T, S]
    unseen = ~visible.any(0)                                                      # [S]
    leak = unseen & (np.abs(dk).reshape(S, -1).max(-1) > 0)
    if visible.any(1).all():
        leak |= unseen & (np.abs(dv).reshape(S, -1).max(-1) > 0)
    if leak.any():
        s = int(np.argmax(leak))
        raise Failed([f"key {s} is masked for every query (keep = {fmt_array(case['keep'])}, "
                      f"offset = {case['offset']}): it must get no gradient",
                      f"dk[{s}] = {fmt_array(dk[s])}", f"dv[{s}] = {fmt_array(dv[s])}"],
                     case, [dq, dk, dv])


SOFTCAP_ATTENTION_BACKWARD = Exercise(
    "softcap_attention_backward", "attention_backward",
    ("q", "k", "v", "keep", "offset", "multiplier", "grad"), ("dq", "dk", "dv"),
    "soft-capped attention's backward pass: through the weighted values, the softmax, the "
    "cap and the multiplier",
    "16_training.py", "minigrok/training/gradients.py: attention_backward",
    _attention_backward, _attnb_cases, _attnb_example,
    lambda c: [c["q"].shape, c["k"].shape, c["v"].shape],
    properties=(Property("masked keys get no gradient", _attnb_masked_keys),
                Property("dq, dk and dv are the derivatives of the attention (central "
                         "finite differences, float64)", _attnb_finite_differences)),
    mistakes=(Mistake("the soft cap has a derivative too: d/ds 30 tanh(s / 30) = "
                      "1 - tanh(s / 30)^2, which multiplies the softmax's gradient",
                      lambda *a: _attention_backward(*a, cap_derivative=False)),
              Mistake("the softmax's backward subtracts each row's mean: p (dp - sum(p dp)), "
                      "not p dp", lambda *a: _attention_backward(*a, subtract=False)),
              Mistake("the scores are q.k times the multiplier: dq and dk carry it too",
                      lambda *a: _attention_backward(*a, multiply=False)),
              Mistake("a kv head's keys and values serve all G query heads of its group: "
                      "add their gradients (sum over G), do not average them",
                      lambda *a: _attention_backward(*a, sum_heads=False))),
    rtol=1e-4, atol=1e-4)
