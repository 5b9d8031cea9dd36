"""Exercises rmsnorm and rope: normalising a token, rotating its query/key heads.

rmsnorm: x / sqrt(mean(x^2) + eps) * scale, scale-free and rms 1 per row (lesson 05).
rope: Grok-1's rotate-half RoPE; position 0 is the identity, rotations keep lengths and
q.k depends only on the distance between positions (lesson 06).
"""

import numpy as np

from ..reference import rmsnorm, rope
from .grading import (Exercise, Failed, Mistake, Property, floats, fmt_array, indent, call,
                      close)


# ------------------------------------------------------------------ 1. rmsnorm

def _rmsnorm_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=floats(st, 4))),
                "scale": draw(hnp.arrays(np.float32, (D,), elements=floats(st, 2)))}
    return cases()


def _rmsnorm_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((3, 8), dtype=np.float32),
            "scale": rng.standard_normal(8, dtype=np.float32)}


def _loud_rows(x):
    """Rows whose mean square dwarfs eps, where RMSNorm must be exactly scale-free."""
    return (x.astype(np.float64) ** 2).mean(-1) >= 0.1


def _rmsnorm_scale_free(ex, fn, case):
    x, scale = case["x"], case["scale"]
    rows = _loud_rows(x)
    if not rows.any():
        return
    a = call(ex, fn, case)[0]
    b = call(ex, fn, {"x": x * np.float32(3.0), "scale": scale})[0]
    if a.shape != x.shape or b.shape != x.shape:
        return                                     # the shape property reports it
    if not np.allclose(a[rows], b[rows], rtol=1e-3, atol=1e-4):
        raise Failed(["rms_norm(3 * x) should equal rms_norm(x): RMSNorm divides out the "
                      "size of each row", "rms_norm(x):", indent(fmt_array(a[rows]), "  "),
                      "rms_norm(3 * x):", indent(fmt_array(b[rows]), "  ")],
                     case, [a])


def _rmsnorm_unit_rms(ex, fn, case):
    x = case["x"]
    rows = _loud_rows(x)
    if not rows.any():
        return
    ones = np.ones(x.shape[-1], np.float32)
    y = call(ex, fn, {"x": x, "scale": ones})[0]
    if y.shape != x.shape:
        return
    rms = np.sqrt((y[rows].astype(np.float64) ** 2).mean(-1))
    if not np.allclose(rms, 1.0, atol=1e-3):
        raise Failed([f"with scale = 1 every row of the output should have rms 1, got rms "
                      f"{fmt_array(rms)}"], {"x": x, "scale": ones}, [y])


def _rmsnorm_quiet_rows(ex, fn, case):
    # Rows 1000x smaller: a mean square of ~1e-6 against eps = 1e-5, so where eps sits
    # decides the answer (inside the root it keeps a near-zero row small).
    quiet = {"x": case["x"] * np.float32(1e-3), "scale": case["scale"]}
    y = call(ex, fn, quiet)[0]
    want = ex.reference(quiet["x"], quiet["scale"])
    close("rms_norm(x / 1000)", y, want, ex.rtol, ex.atol * 1e-3, quiet,
           ["rows whose mean square is near eps must agree too"])


def _rms_one_plus(x, scale, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1 + scale)


def _rms_eps_outside(x, scale, eps=1e-5):
    x = x.astype(np.float32)
    return x / (np.sqrt((x * x).mean(-1, keepdims=True)) + eps) * scale


def _rms_axis0(x, scale, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(0, keepdims=True) + eps) * scale


def _rms_sum(x, scale, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + eps) * scale


def _rms_layernorm(x, scale, eps=1e-5):
    x = x.astype(np.float32)
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * scale


RMSNORM = Exercise(
    "rmsnorm", "rms_norm", ("x", "scale"), ("out",),
    "RMSNorm: normalise each token by its root mean square, then scale",
    "05_rmsnorm.py", "minigrok/reference/rmsnorm.py: rms_norm",
    lambda x, scale: rmsnorm.rms_norm(x, scale),
    _rmsnorm_cases, _rmsnorm_example, lambda c: [c["x"].shape],
    properties=(Property("rms_norm(3 * x) == rms_norm(x): the size of a row divides out",
                         _rmsnorm_scale_free),
                Property("with scale = 1 every output row has rms 1", _rmsnorm_unit_rms),
                Property("rows near zero (mean square ~ eps) agree with minigrok too",
                         _rmsnorm_quiet_rows)),
    mistakes=(Mistake("you multiply by (1 + scale); Grok-1 multiplies by the scale itself",
                      _rms_one_plus),
              Mistake("eps belongs inside the square root: x / sqrt(mean(x^2) + eps)",
                      _rms_eps_outside),
              Mistake("normalise each token (row) over its D features: the mean is over "
                      "the last axis, not over the tokens", _rms_axis0),
              Mistake("that is the root of the SUM of squares; RMSNorm uses the MEAN",
                      _rms_sum),
              Mistake("that is LayerNorm (it subtracts the mean); RMSNorm does not centre",
                      _rms_layernorm)),
    rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 2. rope

def _rope_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, N, half = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
        return {"x": draw(hnp.arrays(np.float32, (T, N, 2 * half), elements=floats(st, 4))),
                "positions": draw(hnp.arrays(np.int64, (T,), elements=st.integers(0, 300)))}
    return cases()


def _rope_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 2, 8), dtype=np.float32),
            "positions": np.arange(4)}


def _rope_identity_at_zero(ex, fn, case):
    x = case["x"]
    zero = {"x": x, "positions": np.zeros_like(case["positions"])}
    y = call(ex, fn, zero)[0]
    close("apply_rope(x, positions=0)", y, x, 1e-5, 1e-5, zero,
           ["at position 0 every angle is 0: cos = 1, sin = 0, so RoPE must return x itself"])


def _rope_keeps_length(ex, fn, case):
    x = case["x"]
    y = call(ex, fn, case)[0]
    if y.shape != x.shape:
        return
    got = np.linalg.norm(y.astype(np.float64), axis=-1)
    want = np.linalg.norm(x.astype(np.float64), axis=-1)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise Failed(["RoPE only rotates: every head vector must keep its length",
                      f"|x| per head:     {fmt_array(want)}",
                      f"|rope(x)| per head: {fmt_array(got)}"], case, [y])


def _rope_relative(ex, fn, case):
    """q at m and k at n: q.k after RoPE depends only on m - n, so shifting both changes nothing."""
    x, pos = case["x"], case["positions"]
    q, k = x[:1], x[-1:]
    m, n = pos[:1], pos[-1:]
    shift = 7
    dots = []
    for s in (0, shift):
        rq = call(ex, fn, {"x": q, "positions": m + s})[0]
        rk = call(ex, fn, {"x": k, "positions": n + s})[0]
        if rq.shape != q.shape or rk.shape != k.shape:
            return
        dots.append((rq.astype(np.float64) * rk).sum(-1))
    bound = 1e-3 * (1 + np.linalg.norm(q, axis=-1) * np.linalg.norm(k, axis=-1))
    if not np.all(np.abs(dots[0] - dots[1]) <= bound):
        raise Failed([f"q at position {int(m[0])} and k at position {int(n[0])}: after RoPE "
                      f"their dot product must depend only on the distance {int(m[0] - n[0])},"
                      f" so moving both by {shift} must not change it",
                      f"q.k per head at ({int(m[0])}, {int(n[0])}): {fmt_array(dots[0])}",
                      f"q.k per head at ({int(m[0]) + shift}, {int(n[0]) + shift}): "
                      f"{fmt_array(dots[1])}"], case)


def _rope_interleaved(x, positions, base=10000):
    d = x.shape[-1]
    inv = 1.0 / base ** (np.arange(0, d, 2) / d)
    ang = positions[:, None, None] * inv
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x, dtype=np.float64)
    out[..., 0::2] = x1 * np.cos(ang) - x2 * np.sin(ang)
    out[..., 1::2] = x1 * np.sin(ang) + x2 * np.cos(ang)
    return out


def _rope_variant(x, positions, sign=1.0, exponent=2.0, base=10000):
    d = x.shape[-1]
    inv = 1.0 / base ** (exponent * np.arange(d // 2) / d)
    ang = np.concatenate([positions[:, None] * inv] * 2, axis=-1)[:, None, :]
    x1, x2 = np.split(x.astype(np.float64), 2, axis=-1)
    return x * np.cos(ang) + sign * np.concatenate([-x2, x1], -1) * np.sin(ang)


ROPE = Exercise(
    "rope", "apply_rope", ("x", "positions"), ("out",),
    "RoPE in Grok-1's rotate-half layout",
    "06_rope.py", "minigrok/reference/rope.py: apply_rope (with rope_angles, rotate_half)",
    lambda x, positions: rope.apply_rope(x, positions),
    _rope_cases, _rope_example, lambda c: [c["x"].shape],
    properties=(Property("position 0 leaves every vector unchanged", _rope_identity_at_zero),
                Property("rotating keeps the length of every head vector", _rope_keeps_length),
                Property("q.k after RoPE depends only on the distance between positions",
                         _rope_relative)),
    mistakes=(Mistake("that is the interleaved-pairs layout (x[0::2], x[1::2]); Grok-1 "
                      "rotates feature i of the first half with feature i of the second "
                      "half (rotate_half)", _rope_interleaved),
              Mistake("your rotation goes the wrong way: x*cos + rotate_half(x)*sin with "
                      "rotate_half(x) = concat(-x2, x1)",
                      lambda x, positions: _rope_variant(x, positions, sign=-1.0)),
              Mistake("the frequencies are base^(-2i/d) for i = 0..d/2-1; you used "
                      "base^(-i/d)", lambda x, positions: _rope_variant(x, positions,
                                                                        exponent=1.0))),
    atol=2e-3)
