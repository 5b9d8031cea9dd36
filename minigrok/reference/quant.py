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


def linear(x, w):
    """x [T, in] @ w [in, out] -> [T, out] float32.

    w is a float array, a QuantizedWeight8bit (the product is ``x @ dequantize(w)``, its
    definition), or a weight that brings its own product of the same sums, ``w.matmul(x)``:
    that is where the engine plugs in (engine/weights.py), so that the same model code
    multiplies by int8 weights without widening them, on all cores or on a GPU. Tests hold
    every such product to ``x @ dequantize(w)``.
    """
    xp = array_module(x)
    x = x.astype(xp.float32, copy=False)
    if isinstance(w, QuantizedWeight8bit):
        return x @ dequantize(w)
    if hasattr(w, "matmul"):
        return w.matmul(x)
    return x @ xp.asarray(w, dtype=xp.float32)
