"""Exercises dequantize and int8_matmul: Grok-1's int8 weights with bf16 block scales.

dequantize: weight * scales, row block b using scales[b] (lesson 03). int8_matmul: x times
such a weight without ever widening all of it to float32, checked with tracemalloc (lesson 15).
"""

import numpy as np

from ..reference import quant
from .grading import Exercise, Failed, Mistake, Property, floats, arguments, call, close


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
    y = call(ex, fn, one)[0]
    close("dequantize(weight, scales[:1])", y, w.astype(np.float32) * s, 1e-6, 0, one,
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


DEQUANTIZE = Exercise(
    "dequantize", "dequantize", ("weight", "scales"), ("out",),
    "int8 weights times bf16 block scales",
    "03_quantisation.py", "minigrok/reference/quant.py: dequantize",
    _dequant_reference,
    _dequant_cases, _dequant_example, lambda c: [c["weight"].shape],
    properties=(Property("with one block, column j is scaled by scales[0, j]",
                         _dequant_one_block),),
    mistakes=(Mistake("the row blocks are contiguous: rows 0..R-1 use scales[0], rows "
                      "R..2R-1 use scales[1] (np.repeat, not np.tile)", _dequant_tiled),
              Mistake("dequantising multiplies by the scale; you divided", _dequant_divide),
              Mistake("the scale already includes the 1/127: W = weight * scale",
                      _dequant_127)),
    rtol=1e-6, atol=0)


# ------------------------------------------------------------------ 7b. int8 product

def _int8_cases(st, hnp):
    @st.composite
    def cases(draw):
        B, R, out, T = (draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                        draw(st.integers(1, 4)), draw(st.integers(1, 3)))
        return {"x": draw(hnp.arrays(np.float32, (T, B * R), elements=floats(st, 4))),
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
    # 64 rows widened at a time, in float64: the exact product up to the final float32
    # rounding, far under the memory check's limit below (the grader uses the reference
    # layer only; minigrok's own fast path is engine/cpu.py's int8_matmul)
    R = weight.shape[0] // scales.shape[0]
    return _int8_rows(x, weight, scales, lambda rows: scales[rows // R].astype(np.float64))


def _int8_compare(ex, got, want, case):
    """Within float32 rounding of the exact product: a sum's error scales with |x| @ |W|."""
    x, w, s = case["x"], case["weight"], case["scales"]
    R = w.shape[0] // s.shape[0]
    dense = np.abs(w.astype(np.float64) * np.repeat(s.astype(np.float64), R, axis=0))
    bound = 1e-5 * (np.abs(x.astype(np.float64)) @ dense) + 1e-6
    g = np.asarray(got[0])
    if g.shape != want[0].shape or not np.all(np.abs(g.astype(np.float64) - want[0]) <= bound):
        close("out", g, want[0], 0, 0, case)


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
    args = arguments(ex, big)                                  # copied before the measurement
    limit = n_in * n_out * 4 // 2
    tracemalloc.start()                                    # numpy reports its arrays to it
    try:
        before = tracemalloc.get_traced_memory()[0]
        call(ex, fn, big, args)
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


INT8_MATMUL = Exercise(
    "int8_matmul", "int8_matmul", ("x", "weight", "scales"), ("out",),
    "x times an int8 weight with block scales, never widening the whole weight",
    "15_fast_paths.py", "minigrok/engine/cpu.py: int8_matmul (its numpy tiles, _int8_columns_product)",
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
    compare=_int8_compare)
