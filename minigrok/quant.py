"""int8 weights with bfloat16 scales, as Grok-1 stores them.

A quantised weight W [in, out] is stored as int8 ``weight`` [in, out] and bf16 ``scales``
[B, out]: the in rows are cut into B equal contiguous blocks and row r of block b is
``weight[r] * scales[b]``. B = 1 is one scale per output column (query, key, value, the
expert up-projections); B = 8 is the row-parallel layout of the attention output and the
expert down-projection, whose rows were split over 8 devices when the model was trained.
Stacked experts put E first: weight [E, in, out], scales [E, B, out].

bf16 is the top half of an fp32, so minigrok keeps scales as their uint16 bits and widens
them with a shift: no ml_dtypes at run time.
"""

from typing import NamedTuple

import numpy as np

from .xp import array_module


class QuantizedWeight8bit(NamedTuple):
    """One quantised weight, named like the official dataclass it is read from.

    weight: int8 [in, out] or [E, in, out] (experts stacked first).
    scales: bfloat16 *bits* as uint16, [B, out] or [E, B, out].
    """

    weight: object
    scales: object


def bf16_to_f32(bits):
    """bits: uint16 [...] (bf16 bit patterns) -> float32 [...]."""
    xp = array_module(bits)
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def f32_to_bf16(x):
    """x: float32 [...] -> uint16 [...], rounded to nearest even like every bf16 cast.

    NaN stays NaN (a quiet NaN pattern) instead of rounding into infinity.
    """
    xp = array_module(x)
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return xp.where(xp.isnan(x), xp.uint32(0x7FC0), rounded).astype(xp.uint16)


def quantize(w, blocks: int = 1):
    """Absmax int8 quantisation of w: float [..., in, out] -> QuantizedWeight8bit.

    Each (row block, column) gets scale = max|w| / 127, rounded to bf16 as stored; the int8
    values are round(w / scale) with that stored scale, so dequantize() is the best int8
    approximation the file can express. Returns bf16 scales of shape [..., blocks, out].
    """
    xp = array_module(w)
    *lead, n_in, n_out = w.shape
    if n_in % blocks:
        raise ValueError(f"{n_in} rows do not split into {blocks} blocks")
    wb = w.reshape(*lead, blocks, n_in // blocks, n_out).astype(xp.float32)
    absmax = xp.abs(wb).max(axis=-2)                             # [..., B, out]
    scales = f32_to_bf16(xp.maximum(absmax, 1e-30) / 127.0)
    s = bf16_to_f32(scales)[..., None, :]                        # [..., B, 1, out]
    q = xp.clip(xp.rint(wb / s), -127, 127).astype(xp.int8)
    return QuantizedWeight8bit(q.reshape(w.shape), scales)


def dequantize(qw):
    """QuantizedWeight8bit -> float32 [..., in, out]: every row times its block's scales.

    The official code multiplies in bf16 (rounding the product); minigrok keeps fp32.
    """
    xp = array_module(qw.weight)
    *lead, n_in, n_out = qw.weight.shape
    blocks = qw.scales.shape[-2]
    w = xp.asarray(qw.weight).reshape(*lead, blocks, n_in // blocks, n_out)   # [..., B, rows, out]
    s = bf16_to_f32(xp.asarray(qw.scales))[..., :, None, :]                  # [..., B, 1, out]
    return (w.astype(xp.float32) * s).reshape(*lead, n_in, n_out)


# Rows of int8 weight widened to float32 at a time: 2**20 elements (4 MB) stays in cache, so
# each weight byte is read from memory once and the widened copy is consumed where it lies.
CHUNK_ELEMENTS = 1 << 20
# Weights at least this large (elements) are split between two threads on the CPU; numpy
# releases the GIL inside both the int8 -> float32 copy and the BLAS product.
PARALLEL_ELEMENTS = 1 << 22
_pool = None


def _partial_product(x, weight, scales, r0: int, r1: int, chunk_rows: int):
    """sum over weight rows [r0, r1) of x[:, r] * weight[r] * its block's scales -> [T, out]."""
    xp = array_module(x)
    n_in, n_out = weight.shape
    rows = n_in // scales.shape[0]                               # rows per scale block
    out = xp.zeros((x.shape[0], n_out), dtype=xp.float32)
    buf = xp.empty((min(chunk_rows, r1 - r0), n_out), dtype=xp.float32)
    for b in range(r0 // rows, (r1 - 1) // rows + 1):
        lo, hi = max(r0, b * rows), min(r1, (b + 1) * rows)      # this block's rows in range
        part = xp.zeros_like(out)
        for c0 in range(lo, hi, chunk_rows):
            c1 = min(c0 + chunk_rows, hi)
            w = buf[:c1 - c0]
            w[...] = xp.asarray(weight[c0:c1])                   # int8 -> float32, in cache
            part += x[:, c0:c1] @ w
        out += part * scales[b]                                  # (x_b @ w_b) * s_b
    return out


def matmul(x, qw, chunk_rows: int | None = None):
    """x @ dequantize(qw) without ever holding the fp32 weight: x [T, in] -> [T, out] fp32.

    qw must be a single matrix (weight [in, out]; index experts first). The int8 rows are
    widened ``chunk_rows`` at a time inside each scale block; because a scale multiplies a
    whole output column of its block, it is applied to the [T, out] partial product instead
    of to every weight: (x_b @ w_b) * s_b == x_b @ (w_b * s_b).
    """
    global _pool
    xp = array_module(x)
    n_in, n_out = qw.weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"matmul: x has {x.shape[-1]} features, weight has {n_in} rows")
    scales = bf16_to_f32(xp.asarray(qw.scales))                  # [B, out]
    x = x.astype(xp.float32, copy=False)
    if chunk_rows is None:
        if xp is not np or n_in * n_out <= CHUNK_ELEMENTS:     # small: one widened copy
            return x @ dequantize(qw)
        chunk_rows = max(1, CHUNK_ELEMENTS // n_out)
    if xp is not np or n_in * n_out < PARALLEL_ELEMENTS:
        return _partial_product(x, qw.weight, scales, 0, n_in, chunk_rows)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(2, thread_name_prefix="minigrok-matmul")
    half = n_in // 2
    parts = _pool.map(lambda r: _partial_product(x, qw.weight, scales, *r, chunk_rows),
                      [(0, half), (half, n_in)])
    first, second = parts
    return first + second


def linear(x, w):
    """x [T, in] @ w [in, out] -> [T, out] float32, for a float or a quantised weight."""
    if isinstance(w, QuantizedWeight8bit):
        return matmul(x, w)
    xp = array_module(x)
    return x.astype(xp.float32, copy=False) @ xp.asarray(w, dtype=xp.float32)
