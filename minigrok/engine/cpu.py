"""The CPU's ``x @ dequantize(W)`` and ``h @ E.T``, arranged for speed.

Decoding one token is a chain of matrix-vector products whose cost is reading the weights:
1.3 GB of int8 per full-width layer. The reference (``quant.dequantize``, then ``@``)
widens a whole matrix to float32 first, writing and re-reading 4 bytes for every byte it
needed. This computes the same sums without that: numpy has no int8 matrix product, so the
weight is widened a cache-sized tile at a time and multiplied where it lies, the threads
sharing the columns (engine/threads.py); a few tokens go to the compiled kernel instead
(engine/native.py). Property tests hold both to ``x @ dequantize(W)`` (tests/test_fast.py,
test_engine.py).
"""

import numpy as np

from ..environment import num_threads
from .native import NATIVE_TOKENS, native_kernel, native_matmul, native_unembed
from .threads import PARALLEL_ELEMENTS, blas_threads, parallel_map, split_range

# Elements of int8 weight widened to float32 at a time per thread: 2**20 (a 4 MB buffer, in
# the last-level cache). Smaller chunks measured slower: numpy's per-call cost and the
# partial sums' own traffic grow, the widening does not get faster.
CHUNK_ELEMENTS = 1 << 20
# Rows of a tile of the numpy path, at least (see int8_matmul).
TILE_ROWS = 256


def _int8_columns_product(x, weight, scales, out, c0: int, c1: int, chunk_rows: int,
                          tile_elements: int):
    """out[:, c0:c1] = x @ (weight[:, c0:c1] times its scales), a tile at a time.

    A tile is ``chunk_rows`` rows of int8 (within one scale block) by as many columns as
    make ``tile_elements``: it is widened into a float32 buffer in cache and multiplied where
    it lies. The tile's products are summed over the block's rows, then the block's scales
    multiply that sum once, (x_b @ q_b) * s_b == x_b @ (q_b * s_b), and the blocks are added
    in order. No other thread adds into these columns.
    """
    n_in = weight.shape[0]
    rows = n_in // scales.shape[0]                               # rows per scale block
    width = max(1, tile_elements // chunk_rows)                  # columns per tile
    for t0 in range(c0, c1, width):
        t1 = min(t0 + width, c1)
        part = np.empty((x.shape[0], t1 - t0), dtype=np.float32)
        step = np.empty_like(part)
        buf = np.empty((min(chunk_rows, rows), t1 - t0), dtype=np.float32)
        for b in range(scales.shape[0]):
            for r0 in range(b * rows, (b + 1) * rows, chunk_rows):
                w = buf[:min(chunk_rows, (b + 1) * rows - r0)]
                np.copyto(w, weight[r0:r0 + len(w), t0:t1], casting="unsafe")   # int8 -> f32
                if r0 == b * rows:
                    np.matmul(x[:, r0:r0 + len(w)], w, out=part)
                else:
                    np.add(part, np.matmul(x[:, r0:r0 + len(w)], w, out=step), out=part)
            if b == 0:
                np.multiply(part, scales[0, t0:t1], out=out[:, t0:t1])
            else:
                out[:, t0:t1] += part * scales[b, t0:t1]


def native_takes(x, weight) -> bool:
    """Whether int8_matmul hands this product to the compiled kernel: a few tokens, a
    C-contiguous weight, and a kernel built."""
    return x.shape[0] <= NATIVE_TOKENS and weight.flags.c_contiguous and \
        native_kernel() is not None


def int8_matmul(x, weight, scales, chunk_rows: int | None = None, threads: int | None = None,
                tile_elements: int = CHUNK_ELEMENTS):
    """x [T, in] float32 @ (weight [in, out] int8 times scales [B, out] float32) -> [T, out].

    On the host. Up to NATIVE_TOKENS tokens go to the compiled kernel (``native_matmul``)
    where there is one; otherwise numpy widens tiles of the weight (``_int8_columns_product``),
    the threads sharing the columns. ``chunk_rows`` (rows per tile), ``threads`` and
    ``tile_elements`` (int8 elements per tile) default to the measured best for the shape;
    setting ``chunk_rows`` forces the numpy path (tests set them to force the tiled and the
    threaded paths on small matrices).
    """
    n_in, n_out = weight.shape
    if chunk_rows is None and native_takes(x, weight):
        return native_matmul(x, weight, scales, native_kernel(), threads)
    if chunk_rows is None:
        # Many tokens: tiles at least TILE_ROWS deep, so that BLAS runs near its peak (512
        # tokens x a 6144 x 32768 expert: 118-134 GFLOP/s on 2 cores, against 57 for whole
        # rows 32 at a time). A few tokens: tiles as wide as a thread's columns, read as
        # long runs (5.5-5.9 GB/s for one token on 2 threads, against 4.1 in 256 x 4096).
        chunk_rows = max(1, CHUNK_ELEMENTS // n_out)
        if x.shape[0] > NATIVE_TOKENS:
            chunk_rows = max(TILE_ROWS, chunk_rows)
    if threads is None:
        threads = num_threads() if n_in * n_out >= PARALLEL_ELEMENTS else 1
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    with blas_threads(1):
        parallel_map(lambda c0, c1: _int8_columns_product(x, weight, scales, out, c0, c1,
                                                          chunk_rows, tile_elements),
                     split_range(n_out, threads, 64))
    return out


def matmul_transposed(h, matrix, threads: int | None = None, chunk_rows: int | None = None):
    """h [T, D] @ matrix[V, D].T -> [T, V] float32, for a float32 matrix numpy cannot hand to BLAS.

    A checkpoint's float32 payload starts wherever its pickle header ends, usually not on a
    4-byte boundary, and numpy multiplies unaligned arrays without BLAS, ~10x slower. Up to
    NATIVE_TOKENS tokens go to the compiled kernel, which reads the rows where they lie
    (native_unembed: 28.9-29.8 GB/s on Grok-1's 3.2 GB embedding here, against 20-22 by
    the copies). Otherwise, or with ``chunk_rows`` set, the rows are copied into an aligned buffer
    a cache-sized chunk at a time, each thread filling its own slice of the output.
    """
    n_rows, dim = matrix.shape
    if h.shape[0] <= NATIVE_TOKENS and chunk_rows is None and matrix.flags.c_contiguous:
        kernel = native_kernel("unembed")
        if kernel is not None:
            return native_unembed(h, matrix, kernel, threads)
    out = np.empty((h.shape[0], n_rows), dtype=np.float32)
    chunk = chunk_rows or max(1, CHUNK_ELEMENTS // dim)           # rows copied at a time

    def rows_product(r0, r1):
        buf = np.empty((min(chunk, r1 - r0), dim), dtype=np.float32)
        for c0 in range(r0, r1, chunk):
            rows = buf[:min(chunk, r1 - c0)]
            np.copyto(rows, matrix[c0:c0 + len(rows)])
            np.matmul(h, rows.T, out=out[:, c0:c0 + len(rows)])

    threads = threads or num_threads()
    with blas_threads(1):
        parallel_map(rows_product, split_range(n_rows, threads, chunk))
    return out
