"""Classroom exercises: a student writes one Grok-1 step, minigrok checks it against its own.

    python -m minigrok exercises list
    python -m minigrok exercises check rope                   # lessons/exercises/rope.py
    python -m minigrok exercises check rope --file my_rope.py # a student's own copy
    python -m minigrok exercises check rope --reference       # minigrok's function (passes)

Each exercise names a function with minigrok's own signature and shapes. The check runs
hypothesis properties one at a time, in teaching order (shapes first, then what the step
must satisfy, last "agrees with minigrok"), and stops at the first that fails, printing the
smallest failing input hypothesis found, expected and got values, and, when the student's
answer matches a known mistake (interleaved RoPE, renormalised gates, erf GELU...), a hint
naming it. Runs are derandomised: the same file always gets the same feedback.

hypothesis is imported only by ``check`` (it is a test dependency, not a run-time one).
"""

import dataclasses
import importlib.util
import math
import os
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from . import attention, fast, moe, quant, rmsnorm, rope, sampling
from .errors import MinigrokError

# The stubs ship in the repository beside the package, not inside it.
STUBS_DIR = Path(__file__).resolve().parent.parent / "lessons" / "exercises"

MAX_EXAMPLES = 40          # per property; every example is a handful of tiny numpy calls


class Failed(Exception):
    """A property that does not hold: ``lines`` explain it, ``case`` is the input."""

    def __init__(self, lines, case=None, got=None):
        super().__init__(lines[0] if lines else "failed")
        self.lines, self.case, self.got = list(lines), case, got


@dataclasses.dataclass(frozen=True)
class Property:
    text: str                                  # what must hold, in a student's words
    check: Callable                            # (exercise, fn, case) -> None, raises Failed


@dataclasses.dataclass(frozen=True)
class Mistake:
    hint: str
    fn: Callable                               # a wrong version, with the student's signature


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str                                  # stub file lessons/exercises/<name>.py
    function: str                              # the function the student writes
    args: tuple                                # its positional parameters, in order
    outputs: tuple                             # names of its results (one, or a tuple)
    title: str
    lesson: str                                # the lesson that teaches it
    solution: str                              # where minigrok's own version lives
    reference: Callable                        # minigrok's function, the student's signature
    cases: Callable                            # (st, hnp) -> strategy of case dicts
    example: Callable                          # () -> a fixed first case
    shapes: Callable                           # case -> expected shape of each output
    properties: tuple = ()
    mistakes: tuple = ()
    rtol: float = 1e-4
    atol: float = 1e-5
    compare: Callable | None = None            # (exercise, got, want, case) -> None or Failed
    run: Callable | None = None                # (exercise, fn, case) -> arrays to diagnose by


# ----------------------------------------------------------------------------- helpers

def _floats(st, bound: float):
    return st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False)


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _fmt_array(a) -> str:
    """Small arrays on one line as nested lists (rounded); larger ones as numpy prints them."""
    a = np.asarray(a)
    if a.size <= 48:
        if a.dtype.kind == "f":
            return str(np.round(a.astype(np.float64), 4).tolist())
        return str(a.tolist())
    return np.array2string(a, precision=4, suppress_small=True, max_line_width=88, threshold=60)


def _fmt_value(v) -> str:
    if isinstance(v, np.ndarray) and v.size > 48:
        first = _fmt_array(v.reshape(-1)[:6])[:-1]
        return f"{v.dtype} array of shape {_fmt_shape(v.shape)}, starting {first}, ...]"
    if isinstance(v, np.ndarray):
        return f"{_fmt_array(v)}   (shape {_fmt_shape(v.shape)}, {v.dtype})"
    return repr(v)


def _indent(text: str, pad: str) -> str:
    return "\n".join(pad + line for line in text.splitlines())


def _args(ex: Exercise, case: dict) -> list:
    """The function's arguments from ``case``, arrays copied (a function may write into them)."""
    return [np.array(case[a], copy=True) if isinstance(case[a], np.ndarray) else case[a]
            for a in ex.args]


def _call(ex: Exercise, fn, case: dict, args=None):
    """The student's results for ``case`` (called with ``args``, else copies of the case's
    arrays), as a list of arrays (one per output)."""
    args = _args(ex, case) if args is None else args
    try:
        out = fn(*args)
    except NotImplementedError:
        raise Failed([f"{ex.function}() raised NotImplementedError"], case) from None
    except Exception as e:                                   # the student's bug, reported
        raise Failed([f"your {ex.function}() raised {type(e).__name__}: {e}{_where(e)}"],
                     case) from None
    return _results(ex, out, case)


def _where(e: Exception) -> str:
    """' (at file.py line N: code)' for the innermost frame outside minigrok and numpy."""
    ours = Path(__file__).resolve().parent
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        path = Path(frame.filename)
        if ours in path.parents or "site-packages" in path.parts or "numpy" in path.parts:
            continue
        return f" (at {path.name} line {frame.lineno}: {(frame.line or '').strip()})"
    return ""


def _results(ex: Exercise, out, case):
    if out is None:
        raise Failed([f"your {ex.function}() returned None: did you forget `return`?"], case)
    if len(ex.outputs) == 1:
        out = (out,)
    elif not isinstance(out, (tuple, list)) or len(out) != len(ex.outputs):
        raise Failed([f"{ex.function}() must return {len(ex.outputs)} results "
                      f"({', '.join(ex.outputs)}), got {type(out).__name__}"], case)
    try:
        return [np.asarray(o) for o in out]
    except Exception as e:
        raise Failed([f"{ex.function}() returned something that is not an array ({e})"], case)


def _close(name: str, got, want, rtol: float, atol: float, case, hint_lines=()):
    """Failed with expected / got / max error unless got ~= want (same shape)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise Failed([f"{name}: expected shape {_fmt_shape(want.shape)}, got "
                      f"{_fmt_shape(got.shape)}"], case)
    if got.dtype == bool or want.dtype == bool or np.issubdtype(want.dtype, np.integer):
        ok = np.array_equal(got, want)
        err = None
    else:
        g, w = got.astype(np.float64), want.astype(np.float64)
        ok = bool(np.all(np.isclose(g, w, rtol=rtol, atol=atol)))
        err = np.abs(g - w)
    if ok:
        return
    lines = [f"{name}: your values differ from minigrok's",
             "expected: " + _fmt_array(want), "got:      " + _fmt_array(got)]
    if err is not None:
        if np.isnan(got.astype(np.float64)).any():
            lines.append("your result contains NaN")
        else:
            where = np.unravel_index(int(np.nanargmax(err)), err.shape) if err.size else ()
            lines.append(f"max abs error {np.nanmax(err):.4g} at index {tuple(int(i) for i in where)}")
    lines += list(hint_lines)
    raise Failed(lines, case)


def _shape_property(ex: Exercise) -> Property:
    names = ", ".join(ex.outputs)

    def check(ex, fn, case):
        got = _call(ex, fn, case)
        for name, g, want in zip(ex.outputs, got, ex.shapes(case)):
            if tuple(g.shape) != tuple(want):
                raise Failed([f"{name}: expected shape {_fmt_shape(want)}, got "
                              f"{_fmt_shape(g.shape)}"], case, got)
    return Property(f"returns {names} with the documented shape", check)


def _agreement_property(ex: Exercise) -> Property:
    def check(ex, fn, case):
        got = _call(ex, fn, case)
        want = _results(ex, ex.reference(*_args(ex, case)), case)
        try:
            if ex.compare is not None:
                ex.compare(ex, got, want, case)
            else:
                for name, g, w in zip(ex.outputs, got, want):
                    _close(name, g, w, ex.rtol, ex.atol, case)
        except Failed as f:
            raise Failed(f.lines, case, got) from None
    return Property(f"agrees with minigrok ({ex.solution})", check)


def _same_as(ex: Exercise, got, other) -> bool:
    if len(got) != len(other):
        return False
    for g, o in zip(got, other):
        g, o = np.asarray(g), np.asarray(o)
        if g.shape != o.shape:
            return False
        if g.dtype.kind in "fc" or o.dtype.kind in "fc":
            if not np.allclose(g.astype(np.float64), o.astype(np.float64), rtol=ex.rtol,
                               atol=ex.atol, equal_nan=True):
                return False
        elif not np.array_equal(g, o):
            return False
    return True


def _matching(ex: Exercise, fn, mistakes, case) -> list:
    """The mistakes whose output equals the student's on ``case`` (and differs from minigrok's)."""
    run = ex.run or (lambda ex, f, case: _call(ex, f, case))
    try:
        with np.errstate(all="ignore"):
            got = run(ex, fn, case)
            want = run(ex, ex.reference, case)
    except Failed:
        return []
    found = []
    for m in mistakes:
        try:
            with np.errstate(all="ignore"):
                wrong = run(ex, m.fn, case)
        except Exception:
            continue
        if _same_as(ex, got, wrong) and not _same_as(ex, wrong, want):
            found.append(m)
    return found


def _diagnose(ex: Exercise, fn, case) -> list[str]:
    """Hints for the known mistakes whose output equals the student's on ``case``.

    A shrunk case is so small that different mistakes can give the same numbers there (a
    GELU on x @ v and a GELU on the product agree when x @ w = 1); then the fixed example,
    where they differ, decides between them.
    """
    if case is None:
        return []
    found = _matching(ex, fn, ex.mistakes, case)
    if len(found) > 1:
        found = _matching(ex, fn, found, ex.example()) or found
    return [m.hint for m in found]


# ------------------------------------------------------------------ 1. rmsnorm

def _rmsnorm_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=_floats(st, 4))),
                "scale": draw(hnp.arrays(np.float32, (D,), elements=_floats(st, 2)))}
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
    a = _call(ex, fn, case)[0]
    b = _call(ex, fn, {"x": x * np.float32(3.0), "scale": scale})[0]
    if a.shape != x.shape or b.shape != x.shape:
        return                                     # the shape property reports it
    if not np.allclose(a[rows], b[rows], rtol=1e-3, atol=1e-4):
        raise Failed(["rms_norm(3 * x) should equal rms_norm(x): RMSNorm divides out the "
                      "size of each row", "rms_norm(x):", _indent(_fmt_array(a[rows]), "  "),
                      "rms_norm(3 * x):", _indent(_fmt_array(b[rows]), "  ")],
                     case, [a])


def _rmsnorm_unit_rms(ex, fn, case):
    x = case["x"]
    rows = _loud_rows(x)
    if not rows.any():
        return
    ones = np.ones(x.shape[-1], np.float32)
    y = _call(ex, fn, {"x": x, "scale": ones})[0]
    if y.shape != x.shape:
        return
    rms = np.sqrt((y[rows].astype(np.float64) ** 2).mean(-1))
    if not np.allclose(rms, 1.0, atol=1e-3):
        raise Failed([f"with scale = 1 every row of the output should have rms 1, got rms "
                      f"{_fmt_array(rms)}"], {"x": x, "scale": ones}, [y])


def _rmsnorm_quiet_rows(ex, fn, case):
    # Rows 1000x smaller: a mean square of ~1e-6 against eps = 1e-5, so where eps sits
    # decides the answer (inside the root it keeps a near-zero row small).
    quiet = {"x": case["x"] * np.float32(1e-3), "scale": case["scale"]}
    y = _call(ex, fn, quiet)[0]
    want = ex.reference(quiet["x"], quiet["scale"])
    _close("rms_norm(x / 1000)", y, want, ex.rtol, ex.atol * 1e-3, quiet,
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


# ------------------------------------------------------------------ 2. rope

def _rope_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, N, half = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
        return {"x": draw(hnp.arrays(np.float32, (T, N, 2 * half), elements=_floats(st, 4))),
                "positions": draw(hnp.arrays(np.int64, (T,), elements=st.integers(0, 300)))}
    return cases()


def _rope_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 2, 8), dtype=np.float32),
            "positions": np.arange(4)}


def _rope_identity_at_zero(ex, fn, case):
    x = case["x"]
    zero = {"x": x, "positions": np.zeros_like(case["positions"])}
    y = _call(ex, fn, zero)[0]
    _close("apply_rope(x, positions=0)", y, x, 1e-5, 1e-5, zero,
           ["at position 0 every angle is 0: cos = 1, sin = 0, so RoPE must return x itself"])


def _rope_keeps_length(ex, fn, case):
    x = case["x"]
    y = _call(ex, fn, case)[0]
    if y.shape != x.shape:
        return
    got = np.linalg.norm(y.astype(np.float64), axis=-1)
    want = np.linalg.norm(x.astype(np.float64), axis=-1)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise Failed(["RoPE only rotates: every head vector must keep its length",
                      f"|x| per head:     {_fmt_array(want)}",
                      f"|rope(x)| per head: {_fmt_array(got)}"], case, [y])


def _rope_relative(ex, fn, case):
    """q at m and k at n: q.k after RoPE depends only on m - n, so shifting both changes nothing."""
    x, pos = case["x"], case["positions"]
    q, k = x[:1], x[-1:]
    m, n = pos[:1], pos[-1:]
    shift = 7
    dots = []
    for s in (0, shift):
        rq = _call(ex, fn, {"x": q, "positions": m + s})[0]
        rk = _call(ex, fn, {"x": k, "positions": n + s})[0]
        if rq.shape != q.shape or rk.shape != k.shape:
            return
        dots.append((rq.astype(np.float64) * rk).sum(-1))
    bound = 1e-3 * (1 + np.linalg.norm(q, axis=-1) * np.linalg.norm(k, axis=-1))
    if not np.all(np.abs(dots[0] - dots[1]) <= bound):
        raise Failed([f"q at position {int(m[0])} and k at position {int(n[0])}: after RoPE "
                      f"their dot product must depend only on the distance {int(m[0] - n[0])},"
                      f" so moving both by {shift} must not change it",
                      f"q.k per head at ({int(m[0])}, {int(n[0])}): {_fmt_array(dots[0])}",
                      f"q.k per head at ({int(m[0]) + shift}, {int(n[0]) + shift}): "
                      f"{_fmt_array(dots[1])}"], case)


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


# ------------------------------------------------------------------ 3. soft-capped attention

def _attn_cases(st, hnp):
    @st.composite
    def cases(draw):
        K, G, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
        T, offset = draw(st.integers(1, 4)), draw(st.integers(0, 3))
        S = offset + T
        return {"q": draw(hnp.arrays(np.float32, (T, K, G, d), elements=_floats(st, 8))),
                "k": draw(hnp.arrays(np.float32, (S, K, d), elements=_floats(st, 8))),
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
    p = _call(ex, fn, case)[0]
    if p.shape != ex.shapes(case)[0]:
        return
    sums = p.astype(np.float64).sum(-1)
    if not (np.all(p >= 0) and np.allclose(sums, 1, atol=1e-4)):
        raise Failed(["every row (one query, one head) must be a probability distribution: "
                      "all >= 0 and summing to 1",
                      f"row sums: {_fmt_array(sums)}",
                      "(a NaN here usually means masking with -inf: use -1e30 as the "
                      "official code does)" if np.isnan(sums).any() else ""], case, [p])


def _attn_masked(ex, fn, case):
    p = _call(ex, fn, case)[0]
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
                      f"keep = {_fmt_array(case['keep'])}, offset = {case['offset']}"],
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
        return {"k": draw(hnp.arrays(np.float32, (S, K, d), elements=_floats(st, 4))),
                "num_q_heads": K * G,
                "_q": draw(hnp.arrays(np.float32, (S, K * G, d), elements=_floats(st, 4)))}
    return cases()


def _gqa_example():
    rng = np.random.default_rng(0)
    return {"k": rng.standard_normal((3, 2, 4), dtype=np.float32), "num_q_heads": 6,
            "_q": rng.standard_normal((3, 6, 4), dtype=np.float32)}


def _gqa_attention_matches(ex, fn, case):
    """Plain multi-head attention over the expanded keys == minigrok's grouped attention."""
    k, H, q = case["k"], case["num_q_heads"], case["_q"]
    S, K, d = k.shape
    expanded = _call(ex, fn, case)[0]
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


# ------------------------------------------------------------------ 5. router top-2

def _router_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D, E = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 8))
        return {"x": draw(hnp.arrays(np.float32, (T, D), elements=_floats(st, 3))),
                "router": draw(hnp.arrays(np.float32, (D, E), elements=_floats(st, 3))),
                "k": draw(st.integers(1, min(3, E)))}
    return cases()


def _router_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 6), dtype=np.float32),
            "router": rng.standard_normal((6, 8), dtype=np.float32), "k": 2}


def _router_softmax(ex, fn, case):
    probs = _call(ex, fn, case)[0]
    if probs.shape != ex.shapes(case)[0]:
        return
    sums = probs.astype(np.float64).sum(-1)
    if not (np.all(probs >= 0) and np.allclose(sums, 1, atol=1e-4)):
        raise Failed(["probs must be a softmax over all E experts: each row >= 0, summing to 1",
                      f"row sums: {_fmt_array(sums)}"], case)


def _router_top(ex, fn, case):
    probs, ids, gates = _call(ex, fn, case)
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
                          f"probabilities: {_fmt_array(want[t])}"], case)


def _router_gates(ex, fn, case):
    probs, ids, gates = _call(ex, fn, case)
    if gates.shape != ids.shape or probs.shape != ex.shapes(case)[0]:
        return
    ids = ids.astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= probs.shape[1]:
        return
    picked = np.take_along_axis(probs, ids, axis=-1)
    if not np.allclose(gates, picked, rtol=1e-5, atol=1e-6):
        raise Failed(["gates must be the chosen experts' softmax probabilities as they are, "
                      "NOT renormalised to sum to 1 (Grok-1 keeps them summing to less than 1)",
                      f"probs at your expert_ids: {_fmt_array(picked)}",
                      f"your gates:               {_fmt_array(gates)}"], case)


def _router_compare(ex, got, want, case):
    _close("probs", got[0], want[0], ex.rtol, ex.atol, case)
    p = want[0].astype(np.float64)
    ids_got, ids_want = got[1].astype(np.int64), want[1]
    if ids_got.shape != ids_want.shape:
        raise Failed([f"expert_ids: expected shape {_fmt_shape(ids_want.shape)}, got "
                      f"{_fmt_shape(ids_got.shape)}"], case)
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
                          f"probabilities: {_fmt_array(p[t])}"] +
                         (["on a tie the lower expert index wins, as jax.lax.top_k does"]
                          if exact_tie else []), case)
    _close("gates", got[2], want[2], ex.rtol, ex.atol, case)


def _softmax64(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _route_variant(x, router, k, renorm=False, high_ties=False):
    logits = x.astype(np.float32) @ router.astype(np.float32)
    probs = _softmax64(logits.astype(np.float64)).astype(np.float32)
    if high_ties:
        ids = np.argsort(probs, axis=-1, kind="stable")[:, ::-1][:, :k]
    else:
        ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    gates = np.take_along_axis(probs, ids, -1)
    if renorm:
        gates = gates / gates.sum(-1, keepdims=True)
    return probs, ids, gates


# ------------------------------------------------------------------ 6. expert FFN

def _expert_cases(st, hnp):
    @st.composite
    def cases(draw):
        T, D, F = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
        el = _floats(st, 2)
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
    y = _call(ex, fn, case)[0]
    if y.shape != case["x"].shape:
        return
    for t in range(case["x"].shape[0]):
        alone = _call(ex, fn, dict(case, x=case["x"][t:t + 1]))[0]
        if alone.shape != (1, case["x"].shape[1]) or \
                not np.allclose(alone[0], y[t], rtol=1e-4, atol=1e-5):
            raise Failed([f"an expert treats every token on its own: row {t} of expert(x) "
                          f"must equal expert(x[{t}:{t + 1}])",
                          f"in the batch: {_fmt_array(y[t])}",
                          f"alone:        {_fmt_array(np.asarray(alone).ravel())}"],
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


# ------------------------------------------------------------------ 7. block-scale dequantisation

def _bf16_round(x):
    return quant.bf16_to_f32(quant.f32_to_bf16(np.asarray(x, np.float32)))


def _dequant_reference(weight, scales):
    qw = quant.QuantizedWeight8bit(weight, quant.f32_to_bf16(np.asarray(scales, np.float32)))
    return quant.dequantize(qw)


def _dequant_cases(st, hnp):
    @st.composite
    def cases(draw):
        B, R, out = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
        weight = draw(hnp.arrays(np.int8, (B * R, out), elements=st.integers(-127, 127)))
        scales = draw(hnp.arrays(np.float32, (B, out),
                                 elements=st.floats(1 / 64, 4, width=32)))
        return {"weight": weight, "scales": _bf16_round(scales)}
    return cases()


def _dequant_example():
    rng = np.random.default_rng(0)
    return {"weight": rng.integers(-127, 128, (8, 3), dtype=np.int8),
            "scales": _bf16_round(rng.uniform(0.01, 1, (4, 3)))}


def _dequant_one_block(ex, fn, case):
    w, s = case["weight"], case["scales"][:1]
    one = {"weight": w, "scales": s}
    y = _call(ex, fn, one)[0]
    _close("dequantize(weight, scales[:1])", y, w.astype(np.float32) * s, 1e-6, 0, one,
           ["with one block (scales [1, out]) every row is weight[r] * scales[0]: column j "
            "is scaled by scales[0, j]"])


def _dequant_tiled(weight, scales):
    reps = weight.shape[0] // scales.shape[0]
    return weight.astype(np.float32) * np.tile(scales, (reps, 1))


def _dequant_divide(weight, scales):
    rows = weight.shape[0] // scales.shape[0]
    return weight.astype(np.float32) / np.repeat(scales, rows, axis=0)


def _dequant_127(weight, scales):
    rows = weight.shape[0] // scales.shape[0]
    return weight.astype(np.float32) / 127 * np.repeat(scales, rows, axis=0)


# ------------------------------------------------------------------ 7b. int8 product

def _int8_cases(st, hnp):
    @st.composite
    def cases(draw):
        B, R, out, T = (draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                        draw(st.integers(1, 4)), draw(st.integers(1, 3)))
        return {"x": draw(hnp.arrays(np.float32, (T, B * R), elements=_floats(st, 4))),
                "weight": draw(hnp.arrays(np.int8, (B * R, out), elements=st.integers(-127, 127))),
                "scales": _bf16_round(draw(hnp.arrays(np.float32, (B, out),
                                                      elements=st.floats(1 / 64, 4, width=32))))}
    return cases()


def _int8_example():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((2, 8), dtype=np.float32),
            "weight": rng.integers(-127, 128, (8, 3), dtype=np.int8),
            "scales": _bf16_round(rng.uniform(0.01, 1, (4, 3)))}


def _int8_reference(x, weight, scales):
    # minigrok's numpy path, 64 rows widened at a time (its default chunk is sized for the
    # real model's matrices, larger than the whole weight in the memory check below)
    return fast.int8_matmul(x, weight, np.asarray(scales, np.float32), chunk_rows=64)


def _int8_compare(ex, got, want, case):
    """Within float32 rounding of the exact product: a sum's error scales with |x| @ |W|."""
    x, w, s = case["x"], case["weight"], case["scales"]
    R = w.shape[0] // s.shape[0]
    dense = np.abs(w.astype(np.float64) * np.repeat(s.astype(np.float64), R, axis=0))
    bound = 1e-5 * (np.abs(x.astype(np.float64)) @ dense) + 1e-6
    g = np.asarray(got[0])
    if g.shape != want[0].shape or not np.all(np.abs(g.astype(np.float64) - want[0]) <= bound):
        _close("out", g, want[0], 0, 0, case)


# The memory check's problem: 1536 rows (divisible by every B the cases draw) x 512 columns,
# 0.75 MB of int8, 3 MB as float32. Widening all of it, or a whole block of it when B = 1,
# goes over the limit; widening a few dozen rows at a time stays far below.
_INT8_BIG = (1536, 512)


def _int8_memory(ex, fn, case):
    import tracemalloc

    B = case["scales"].shape[0]
    rng = np.random.default_rng(B)
    n_in, n_out = _INT8_BIG
    big = {"x": rng.standard_normal((2, n_in), dtype=np.float32),
           "weight": rng.integers(-127, 128, (n_in, n_out), dtype=np.int8),
           "scales": _bf16_round(rng.uniform(0.01, 1, (B, n_out)))}
    args = _args(ex, big)                                  # copied before the measurement
    limit = n_in * n_out * 4 // 2
    tracemalloc.start()                                    # numpy reports its arrays to it
    try:
        before = tracemalloc.get_traced_memory()[0]
        _call(ex, fn, big, args)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    if peak > limit:
        raise Failed([f"your int8_matmul() allocated {peak / 2**20:.2f} MB at its peak for a "
                      f"{n_in} x {n_out} int8 weight ({B} scale block{'s' * (B > 1)}); the "
                      f"float32 weight would be {n_in * n_out * 4 / 2**20:.0f} MB and the limit "
                      f"is half of that",
                      "widen a few rows at a time (weight[r0:r1].astype(np.float32)), even "
                      "inside a block, and add their products; note that x @ weight on an "
                      "int8 weight widens all of it too"],
                     dict(big, _limit_mb=round(limit / 2**20, 2)))


def _int8_rows(x, weight, scales, scale_of_row, chunk=64):
    """x @ (weight * scale_of_row(rows)), 64 rows widened at a time: the mistakes' engine."""
    out = np.zeros((x.shape[0], weight.shape[1]), np.float64)
    for r0 in range(0, weight.shape[0], chunk):
        rows = np.arange(r0, min(r0 + chunk, weight.shape[0]))
        out += x[:, rows].astype(np.float64) @ (weight[rows] * scale_of_row(rows))
    return out.astype(np.float32)


def _int8_first_scales(x, weight, scales):
    return _int8_rows(x, weight, scales, lambda rows: scales[0].astype(np.float64))


def _int8_tiled(x, weight, scales):
    return _int8_rows(x, weight, scales, lambda rows: scales[rows % len(scales)].astype(np.float64))


def _int8_divide(x, weight, scales):
    R = weight.shape[0] // len(scales)
    return _int8_rows(x, weight, scales, lambda rows: 1 / scales[rows // R].astype(np.float64))


# ------------------------------------------------------------------ 8. nucleus filter

def _nucleus_cases(st, hnp):
    @st.composite
    def cases(draw):
        V = draw(st.integers(1, 8))
        return {"logits": draw(hnp.arrays(np.float32, (V,), elements=_floats(st, 5))),
                "top_p": draw(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0]) |
                              st.floats(0.01, 1.0))}
    return cases()


def _nucleus_example():
    return {"logits": np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], np.float32), "top_p": 0.8}


def _kept(y):
    return np.asarray(y, np.float64) > sampling.FILTERED_LOGIT / 2


def _nucleus_top_survives(ex, fn, case):
    y = _call(ex, fn, case)[0]
    if y.shape != case["logits"].shape:
        return
    best = int(np.argmax(case["logits"]))
    if not _kept(y)[best]:
        raise Failed([f"the most likely token ({best}) must always survive, whatever top_p"],
                     case, [y])


def _nucleus_all_at_one(ex, fn, case):
    one = dict(case, top_p=1.0)
    y = _call(ex, fn, one)[0]
    _close("top_p_filter(logits, 1.0)", y, case["logits"], 1e-6, 0, one,
           ["top_p = 1 keeps every token with its logit unchanged"])


def _nucleus_values(ex, fn, case):
    y = _call(ex, fn, case)[0]
    x = case["logits"]
    if y.shape != x.shape:
        return
    kept = _kept(y)
    bad = (kept & ~np.isclose(y, x, rtol=1e-6, atol=0)) | \
          (~kept & (np.asarray(y, np.float64) != sampling.FILTERED_LOGIT))
    if bad.any():
        raise Failed(["a surviving token keeps its logit; every other token is set to -1e10 "
                      "(the official code's 'minus infinity', a finite number)",
                      f"logits: {_fmt_array(x)}",
                      f"yours:  {_fmt_array(np.asarray(y))}"], case, [y])


def _nucleus_top_ranked(ex, fn, case):
    y = _call(ex, fn, case)[0]
    x = case["logits"]
    if y.shape != x.shape:
        return
    kept = _kept(y)
    if kept.any() and (~kept).any() and x[kept].min() < x[~kept].max():
        raise Failed(["the survivors must be the most likely tokens: every kept logit must be "
                      ">= every dropped one (ties with the last kept token are kept too)",
                      f"logits: {_fmt_array(x)}",
                      f"kept:   {_fmt_array(kept)}"], case, [y])


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
        raise Failed([f"expected shape {_fmt_shape(want[0].shape)}, got {_fmt_shape(y.shape)}"],
                     case)
    kept = _kept(y)
    # The official rule compares a float32 running total with 1 - top_p; a sum that lands
    # within rounding of that line may go either way, so the float64 answer counts as well.
    if not (np.array_equal(kept, _kept(want[0])) or
            np.array_equal(kept, _nucleus_mask(x, p, np.float64))):
        raise Failed(["you keep a different set of tokens than minigrok (the official rule)",
                      f"logits:        {_fmt_array(x)}",
                      f"minigrok keeps {_fmt_array(_kept(want[0]))}",
                      f"you keep       {_fmt_array(kept)}"], case)
    _close("filtered logits", np.where(kept, y, sampling.FILTERED_LOGIT),
           np.where(kept, x, sampling.FILTERED_LOGIT), 1e-6, 0, case)


def _nucleus_hf_style(logits, top_p):
    order = np.argsort(-logits, kind="stable")
    p = _softmax64(logits[order].astype(np.float64))
    cum = np.cumsum(p)
    drop_sorted = cum - p >= top_p
    drop = np.zeros(len(logits), bool)
    drop[order] = drop_sorted
    return np.where(drop, np.float32(sampling.FILTERED_LOGIT), logits)


def _nucleus_stop_before(logits, top_p):
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(_softmax64(logits[order].astype(np.float64)))
    keep_sorted = cum <= top_p
    keep_sorted[0] = True
    keep = np.zeros(len(logits), bool)
    keep[order] = keep_sorted
    return np.where(keep, logits, np.float32(sampling.FILTERED_LOGIT))


def _nucleus_neg_inf(logits, top_p):
    kept = _nucleus_mask(logits, top_p, np.float32)
    return np.where(kept, logits, -np.inf)


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
        el = _floats(st, 4)
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
        keys, values = _results(ex, out, case)
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
                              f"{_fmt_shape((end, K, d))}, got {_fmt_shape(a.shape)}"], case)


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
                              f"expected {_fmt_array(want[bad])}",
                              f"got      {_fmt_array(np.asarray(got[bad]))}"],
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


# ----------------------------------------------------------------------- the registry

EXERCISES = {ex.name: ex for ex in [
    Exercise(
        "rmsnorm", "rms_norm", ("x", "scale"), ("out",),
        "RMSNorm: normalise each token by its root mean square, then scale",
        "05_rmsnorm.py", "minigrok/rmsnorm.py: rms_norm",
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
        rtol=1e-4, atol=1e-5),
    Exercise(
        "rope", "apply_rope", ("x", "positions"), ("out",),
        "RoPE in Grok-1's rotate-half layout",
        "06_rope.py", "minigrok/rope.py: apply_rope (with rope_angles, rotate_half)",
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
        atol=2e-3),
    Exercise(
        "softcap_attention", "attention_weights", ("q", "k", "keep", "offset", "multiplier"),
        ("probs",),
        "soft-capped attention scores, causal and padding masks, softmax",
        "07_attention.py", "minigrok/attention.py: attention_weights",
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
        rtol=1e-4, atol=1e-6),
    Exercise(
        "gqa", "expand_kv", ("k", "num_q_heads"), ("expanded",),
        "grouped-query attention: which kv head each query head reads",
        "07_attention.py", "minigrok/attention.py: attention (q reshaped to [T, K, G, d])",
        _gqa_reference,
        _gqa_cases, _gqa_example,
        lambda c: [(c["k"].shape[0], c["num_q_heads"], c["k"].shape[2])],
        properties=(Property("multi-head attention over your expanded keys equals minigrok's "
                             "grouped attention", _gqa_attention_matches),),
        mistakes=(Mistake("query head h reads kv head h // G (consecutive query heads share a "
                          "kv head), not h % K: use repeat, not tile", _gqa_tiled),
                  Mistake("every query head reads kv head 0", _gqa_first)),
        rtol=0, atol=0),
    Exercise(
        "router_top2", "route", ("x", "router", "k"), ("probs", "expert_ids", "gates"),
        "the router: softmax over all experts, top-k, gates not renormalised",
        "08_router.py", "minigrok/moe.py: route",
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
        rtol=1e-5, atol=1e-6, compare=_router_compare),
    Exercise(
        "expert_ffn", "expert", ("x", "w", "v", "w1"), ("out",),
        "one expert's feed-forward: (gelu(x W) * (x V)) W1",
        "09_experts.py", "minigrok/moe.py: expert (and gelu)",
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
        rtol=1e-4, atol=1e-5),
    Exercise(
        "dequantize", "dequantize", ("weight", "scales"), ("out",),
        "int8 weights times bf16 block scales",
        "03_quantisation.py", "minigrok/quant.py: dequantize",
        _dequant_reference,
        _dequant_cases, _dequant_example, lambda c: [c["weight"].shape],
        properties=(Property("with one block, column j is scaled by scales[0, j]",
                             _dequant_one_block),),
        mistakes=(Mistake("the row blocks are contiguous: rows 0..R-1 use scales[0], rows "
                          "R..2R-1 use scales[1] (np.repeat, not np.tile)", _dequant_tiled),
                  Mistake("dequantising multiplies by the scale; you divided", _dequant_divide),
                  Mistake("the scale already includes the 1/127: W = weight * scale",
                          _dequant_127)),
        rtol=1e-6, atol=0),
    Exercise(
        "int8_matmul", "int8_matmul", ("x", "weight", "scales"), ("out",),
        "x times an int8 weight with block scales, never widening the whole weight",
        "15_fast_paths.py", "minigrok/fast.py: int8_matmul (its numpy path, _int8_columns_product)",
        _int8_reference,
        _int8_cases, _int8_example, lambda c: [(c["x"].shape[0], c["weight"].shape[1])],
        properties=(Property("never holds the float32 weight: peak memory under half of it",
                             _int8_memory),),
        mistakes=(Mistake("every row block has its own scales (Grok-1's attention output and "
                          "expert down-projection have 8): rows b*R..(b+1)*R-1 use scales[b], "
                          "not scales[0]", _int8_first_scales),
                  Mistake("the row blocks are contiguous: rows 0..R-1 use scales[0], rows "
                          "R..2R-1 use scales[1] (not row r -> scales[r % B])", _int8_tiled),
                  Mistake("the weight is int8 times the scale; you divided", _int8_divide)),
        compare=_int8_compare),
    Exercise(
        "nucleus", "top_p_filter", ("logits", "top_p"), ("filtered",),
        "the official nucleus (top-p) filter",
        "12_generation.py", "minigrok/sampling.py: top_p_filter",
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
        compare=_nucleus_compare),
    Exercise(
        "kv_cache", "kv_cache_step", ("cache_k", "cache_v", "length", "k_new", "v_new"),
        ("keys", "values"),
        "one step of the KV cache: store the new keys/values, return everything to attend to",
        "12_generation.py", "minigrok/attention.py: attention (its cache branch) and new_cache",
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
        rtol=0, atol=0, run=_kv_all_steps),
]}


# ------------------------------------------------------------------------ running a check

def names() -> list[str]:
    return list(EXERCISES)


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise MinigrokError(f"unknown exercise {name!r}; the exercises are: "
                            f"{', '.join(EXERCISES)}")
    return EXERCISES[name]


def stub_path(name: str) -> Path:
    return STUBS_DIR / f"{name}.py"


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:                                  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def load_student(ex: Exercise, path) -> Callable:
    """The student's function from the file at ``path`` (imported by path, never installed).

    A missing file is a usage error (MinigrokError); a file that does not import or lacks
    the function is a failed check (``Failed``).
    """
    path = Path(path)
    if not path.is_file():
        raise MinigrokError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"minigrok_exercise_{ex.name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise Failed([f"{_shown(path)} does not import: {type(e).__name__}: {e}"]) from None
    fn = getattr(module, ex.function, None)
    if not callable(fn):
        raise Failed([f"{_shown(path)} has no function {ex.function}(): keep the name and "
                      f"signature of the stub"])
    return fn


def _settings():
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    return settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    report_multiple_bugs=False, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])


def _run_property(ex: Exercise, prop: Property, fn, strategy):
    """None if ``prop`` holds on every generated case, else the (shrunk) Failed."""
    from hypothesis import errors, given

    @_settings()
    @given(strategy)
    def test(case):
        with np.errstate(all="ignore"):
            prop.check(ex, fn, case)

    flaky = tuple(getattr(errors, n) for n in ("Flaky", "FlakyFailure") if hasattr(errors, n))
    try:
        test()
    except Failed as f:
        return f
    except flaky:
        return Failed(["your function gave different answers for the same input: does it keep "
                       "state between calls, or change its input arrays?"])
    return None


def check(name: str, fn=None, *, path=None, write=print) -> bool:
    """Check the student's function (or ``fn``) for exercise ``name``; print the feedback.

    Returns True when every property holds. ``path`` is the student's file (for messages
    and to load ``fn`` from when ``fn`` is None).
    """
    try:
        from hypothesis import strategies as st
        from hypothesis.extra import numpy as hnp
    except ImportError:
        raise MinigrokError("exercises check needs hypothesis: pip install hypothesis") from None
    ex = get(name)
    if fn is None and not Path(path).is_file():
        raise MinigrokError(f"{path}: no such file")
    source = _shown(Path(path)) if path is not None else f"minigrok ({ex.solution})"
    again = f"python -m minigrok exercises check {ex.name}"
    if path is not None and Path(path).resolve() != stub_path(ex.name).resolve():
        again += f" --file {source}"
    write(f"exercise {ex.name}: {ex.title}")
    write(f"checking {ex.function}() from {source}")
    write("")
    try:
        if fn is None:
            fn = load_student(ex, path)
        first = ex.example()
        try:
            with np.errstate(all="ignore"):
                _call(ex, fn, first)
        except Failed as f:
            if f.lines[0].endswith("raised NotImplementedError"):
                write(f"not implemented yet: open {source} and fill in {ex.function}()")
                write(f"(lesson lessons/{ex.lesson} explains the step)")
                return False
            raise Failed(f.lines, first) from None
    except Failed as f:
        _report(ex, None, f, write, again, first_example=True)
        return False

    strategy = ex.cases(st, hnp)
    props = [_shape_property(ex), *ex.properties, _agreement_property(ex)]
    for prop in props:
        failure = _run_property(ex, prop, fn, strategy)
        if failure is None:
            write(f"  ok    {prop.text}")
            continue
        write(f"  FAIL  {prop.text}")
        _report(ex, fn, failure, write, again)
        return False
    write("")
    write(f"PASSED: all {len(props)} checks hold for {ex.function}() "
          f"({MAX_EXAMPLES} generated examples each)")
    return True


def _report(ex: Exercise, fn, failure: Failed, write, again: str, first_example: bool = False):
    if not first_example:
        write("")
    for line in failure.lines:
        if line:
            write(_indent(line, "  "))
    case = failure.case
    if case is not None:
        write("")
        write("  on the first, fixed example:" if first_example else
              "  smallest failing input found:")
        for a in ex.args:
            write(_indent(f"{a} = {_fmt_value(case[a])}", "    "))
        extra = {k[1:]: v for k, v in case.items() if k.startswith("_")}
        if extra:
            write("  and, used by the check around your function:")
            for k, v in extra.items():
                write(_indent(f"{k} = {_fmt_value(v)}", "    "))
    if fn is not None:
        for hint in _diagnose(ex, fn, case)[:1]:         # the first match: one thing to fix
            write("")
            write(f"  hint: {hint}")
    write("")
    write(f"FAILED: fix this, then run again: {again}")
