"""The engine's weights: what the reference's ``linear(x, w)`` multiplies by when the engine
runs the model.

The reference defines the product, ``x @ dequantize(w)``, and defers to a weight that
brings its own (``w.matmul(x)``). These are those weights. Each holds the checkpoint's int8
``weight`` and bf16 ``scales`` as they are and computes the same sums without widening the
whole matrix: on the CPU by engine/cpu.py (the compiled kernel for a few tokens, numpy tiles
for more), on a GPU by engine/gemv.py. A streamed layer's weights stay in the host's memory
map and come to the GPU as a product needs them (engine/stream.py). ``w[e]`` is expert e of
a stacked [E, in, out] weight, as for a plain QuantizedWeight8bit. Tests hold every product
to ``x @ dequantize(w)`` (tests/test_engine.py, test_fast.py, test_cupy.py).
"""

import numpy as np

from ..reference.quant import QuantizedWeight8bit, bf16_to_f32, dequantize
from ..reference.xp import array_module
from .cpu import CHUNK_ELEMENTS, int8_matmul, matmul_transposed, native_takes
from .gemv import GEMV_MAX_TOKENS, gemv_fits, int8_gemv, int8_matmul_gpu
from .native import native_matmuls


def product(x, weight, scales):
    """x [T, in] float32 @ (int8 weight [in, out] times bf16-bit scales [B, out]) -> [T, out],
    by the fast path for where x lives. Both arrays must be where x is.

    CPU: small weights take the reference's ``x @ dequantize(w)`` (as fast, and the same
    numbers); large ones cpu.int8_matmul, which never holds the float32 matrix. GPU: up to
    GEMV_MAX_TOKENS tokens through the int8 GEMV kernels (decoding, a short prefill), more
    through cuBLAS in TF32 (gemv.int8_matmul_gpu).
    """
    xp = array_module(x)
    n_in, n_out = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"matmul: x has {x.shape[-1]} features, weight has {n_in} rows")
    x = x.astype(xp.float32, copy=False)
    if xp is not np:
        if x.shape[0] <= GEMV_MAX_TOKENS and gemv_fits(weight):
            return int8_gemv(x, weight, scales)
        return int8_matmul_gpu(x, weight, xp.asarray(scales))
    if n_in * n_out <= CHUNK_ELEMENTS:
        return x @ dequantize(QuantizedWeight8bit(weight, scales))
    return int8_matmul(x, weight, bf16_to_f32(np.asarray(scales)))


def matmuls(pairs) -> list:
    """[w.matmul(x) for x, w in pairs], the same bits, with the products that the CPU's
    compiled kernel takes made in one parallel_map (native.native_matmuls): no thread waits
    for the other between them. Anything else (a GPU, a small weight) goes one by one."""
    def kernel_takes(x, w):             # as product() would send it to native_matmul
        return isinstance(w, Int8Weight) and array_module(x) is np and \
            w.weight.size > CHUNK_ELEMENTS and native_takes(x, w.weight)

    together = [i for i, (x, w) in enumerate(pairs) if kernel_takes(x, w)]
    out = [None if i in together else w.matmul(x) for i, (x, w) in enumerate(pairs)]
    made = native_matmuls([(pairs[i][0], pairs[i][1].weight,
                            bf16_to_f32(np.asarray(pairs[i][1].scales))) for i in together]
                          ) if together else []
    for i, y in zip(together, made):
        out[i] = y
    return out


class Int8Weight:
    """A quantised weight where the model runs (host memory for the CPU, the layer's GPU).

    weight: int8 [in, out] or [E, in, out]; scales: bf16 bits as uint16, [B, out] or
    [E, B, out], as in QuantizedWeight8bit.
    """

    __slots__ = ("weight", "scales")

    def __init__(self, weight, scales):
        self.weight, self.scales = weight, scales

    def __getitem__(self, e):
        return Int8Weight(self.weight[e], self.scales[e])

    def matmul(self, x):
        """x [T, in] -> x @ dequantize(self) [T, out] float32."""
        return product(x, self.weight, self.scales)


class StreamedWeight:
    """A quantised weight of a streamed layer: in the host's memory map, copied to the GPU
    by ``streamer`` for each use. An expert's view (``w[e]``) starts its copy as soon as it
    is made, and keeps the copy while it lives: a long prefill's tokens go through an expert
    in several calls, and the expert crosses once."""

    __slots__ = ("weight", "scales", "streamer", "_copy")

    def __init__(self, weight, scales, streamer):
        self.weight, self.scales, self.streamer, self._copy = weight, scales, streamer, None

    def __getitem__(self, e):
        view = StreamedWeight(self.weight[e], self.scales[e], self.streamer)
        view._copy = False                              # False: keep the copy once fetched
        self.streamer.prefetch([view])
        return view

    def on_gpu(self):
        """(weight, scales) on the current GPU: the prefetched copy, or one made now."""
        if self._copy:
            return self._copy
        copy = self.streamer.fetch(self)
        if self._copy is False:
            self._copy = copy
        return copy

    def matmul(self, x):
        """x [T, in] on a GPU -> x @ dequantize(self) [T, out] float32."""
        return product(x, *self.on_gpu())


class TiedEmbedding:
    """The float32 embedding matrix [V, D] where numpy cannot hand it to BLAS.

    A checkpoint's float32 payload starts wherever its pickle header ends, usually not on a
    4-byte boundary, and numpy multiplies unaligned arrays without BLAS, ~10x slower: the
    real model's 3.2 GB matrix stays memory-mapped, and ``.T`` multiplies by it a chunk of
    aligned rows at a time (cpu.matmul_transposed). Rows are read where they lie.
    """

    __slots__ = ("matrix",)

    def __init__(self, matrix):
        self.matrix = matrix

    def __getitem__(self, rows):
        return self.matrix[rows]

    @property
    def T(self):
        return _Transposed(self.matrix)


class _Transposed:
    """``TiedEmbedding.T``: a [D, V] weight whose product reads the [V, D] rows."""

    __slots__ = ("matrix",)

    def __init__(self, matrix):
        self.matrix = matrix

    def matmul(self, h):
        """h [T, D] -> h @ matrix.T [T, V] float32."""
        return matmul_transposed(np.asarray(h, dtype=np.float32), self.matrix)
