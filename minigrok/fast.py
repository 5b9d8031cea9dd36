"""The fast paths: the arithmetic of ``x @ dequantize(W)`` and ``h @ E.T``, arranged for speed.

Decoding one token is a chain of matrix-vector products whose cost is reading the weights:
1.3 GB of int8 per full-width layer. The teaching code (``quant.dequantize``, then ``@``)
widens a whole matrix to float32 first, writing and re-reading 4 bytes for every byte it
needed. Everything here computes the same sums without that: property tests hold these
functions to ``x @ dequantize(W)`` (tests/test_components.py, test_fast.py, and for the GPU
kernel test_cupy.py and test_kernel_emulated.py).

On the CPU, numpy has no int8 matrix product, so the weight rows are widened a cache-sized
chunk at a time and multiplied where they lie; the rows are split between threads (numpy
releases the GIL inside the int8 -> float32 copy and inside BLAS). OpenBLAS would start its
own threads inside each small product and fight ours for the same cores (measured on 2 cores:
1.3-4.5 GB/s erratic instead of 6.5 GB/s steady), so it is held to one thread meanwhile.
"""

import contextlib
import ctypes
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Elements of int8 weight widened to float32 at a time per thread: 2**20 (a 4 MB buffer, in
# the last-level cache). Smaller chunks measured slower: numpy's per-call cost and the
# partial sums' own traffic grow, the widening does not get faster.
CHUNK_ELEMENTS = 1 << 20
# Weights at least this large (elements) are split between threads.
PARALLEL_ELEMENTS = 1 << 22


def num_threads() -> int:
    """Threads for the CPU fast paths: $MINIGROK_THREADS, else the cores this process may use."""
    env = os.environ.get("MINIGROK_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            from .errors import MinigrokError
            raise MinigrokError(f"MINIGROK_THREADS={env!r}: a whole number of threads, 1 or more")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                   # not Linux
        return os.cpu_count() or 1


_pool = None
_pool_lock = threading.Lock()


def _map(fn, jobs):
    """[fn(*job) for job in jobs], the jobs running on the thread pool."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(num_threads(), thread_name_prefix="minigrok")
    return list(_pool.map(lambda job: fn(*job), jobs))


def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS that numpy loaded, or None.

    Found by name among the libraries mapped into this process (/proc/self/maps); numpy's
    own wheels carry a renamed OpenBLAS (scipy_openblas64_), distributions the plain one.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    names = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
             ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
             ("openblas_set_num_threads", "openblas_get_num_threads")]
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in names:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                return getattr(lib, set_name), getattr(lib, get_name)
    return None


_blas = None
_blas_users = [0, None]               # blocks inside blas_threads now, the count to restore
_blas_lock = threading.Lock()


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with BLAS limited to ``n`` threads (a no-op where it cannot be set).

    Safe from several threads: the first to enter saves BLAS's count, the last to leave
    puts it back.
    """
    global _blas
    with _blas_lock:
        if _blas is None:
            _blas = _openblas() or False
        if _blas:
            if _blas_users[0] == 0:
                _blas_users[1] = _blas[1]()
            _blas_users[0] += 1
            _blas[0](n)
    try:
        yield
    finally:
        with _blas_lock:
            if _blas:
                _blas_users[0] -= 1
                if _blas_users[0] == 0:
                    _blas[0](_blas_users[1])


def _split(n: int, parts: int, step: int) -> list:
    """[(r0, r1), ...]: range(n) cut into at most ``parts`` pieces on multiples of ``step``."""
    per = -(-n // parts)
    per = -(-per // step) * step
    return [(r0, min(r0 + per, n)) for r0 in range(0, n, per)]


def _int8_rows_product(x, weight, scales, r0: int, r1: int, chunk_rows: int):
    """sum over weight rows [r0, r1) of x[:, r] * weight[r] * its block's scale -> [T, out].

    Within a scale block the int8 rows are widened chunk_rows at a time into one float32
    buffer and multiplied at once; the block's scales multiply the block's partial product,
    (x_b @ q_b) * s_b == x_b @ (q_b * s_b), instead of every weight.
    """
    n_in, n_out = weight.shape
    rows = n_in // scales.shape[0]                               # rows per scale block
    out = np.zeros((x.shape[0], n_out), dtype=np.float32)
    part = np.empty_like(out)
    step = np.empty_like(out)
    buf = np.empty((min(chunk_rows, r1 - r0), n_out), dtype=np.float32)
    for b in range(r0 // rows, (r1 - 1) // rows + 1):
        lo, hi = max(r0, b * rows), min(r1, (b + 1) * rows)      # this block's rows in range
        part[...] = 0
        for c0 in range(lo, hi, chunk_rows):
            c1 = min(c0 + chunk_rows, hi)
            w = buf[:c1 - c0]
            np.copyto(w, weight[c0:c1], casting="unsafe")        # int8 -> float32, in cache
            np.add(part, np.matmul(x[:, c0:c1], w, out=step), out=part)
        out += part * scales[b]
    return out


def int8_matmul(x, weight, scales, chunk_rows: int | None = None, threads: int | None = None):
    """x [T, in] float32 @ (weight [in, out] int8 times scales [B, out] float32) -> [T, out].

    numpy only. ``chunk_rows`` and ``threads`` default to the measured best for the shape;
    tests set them to force the chunked and the threaded paths on small matrices.
    """
    n_in, n_out = weight.shape
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // n_out)
    if threads is None:
        threads = num_threads() if n_in * n_out >= PARALLEL_ELEMENTS else 1
    with blas_threads(1):
        if threads == 1:
            return _int8_rows_product(x, weight, scales, 0, n_in, chunk_rows)
        parts = _map(lambda r0, r1: _int8_rows_product(x, weight, scales, r0, r1, chunk_rows),
                     _split(n_in, threads, chunk_rows))
    return sum(parts[1:], parts[0])


def matmul_transposed(h, matrix, threads: int | None = None):
    """h [T, D] @ matrix[V, D].T -> [T, V] float32, for a float32 matrix numpy cannot hand to BLAS.

    A checkpoint's float32 payload starts wherever its pickle header ends, usually not on a
    4-byte boundary, and numpy multiplies unaligned arrays without BLAS, ~10x slower. The rows
    are copied into an aligned buffer a cache-sized chunk at a time instead, each thread
    filling its own slice of the output.
    """
    n_rows, dim = matrix.shape
    out = np.empty((h.shape[0], n_rows), dtype=np.float32)
    chunk = max(1, CHUNK_ELEMENTS // dim)

    def rows_product(r0, r1):
        buf = np.empty((min(chunk, r1 - r0), dim), dtype=np.float32)
        for c0 in range(r0, r1, chunk):
            rows = buf[:min(chunk, r1 - c0)]
            np.copyto(rows, matrix[c0:c0 + len(rows)])
            np.matmul(h, rows.T, out=out[:, c0:c0 + len(rows)])

    threads = threads or num_threads()
    with blas_threads(1):
        _map(rows_product, _split(n_rows, threads, chunk))
    return out


# -- GPU ---------------------------------------------------------------------------------------
#
# On a GPU the whole int8 matrix can be read at HBM speed, but only by a kernel that reads the
# bytes once: dequantising first writes and re-reads 4 bytes per weight (efficiency ~0.04 for a
# 6144 x 32768 matrix on an H200). One token's product y = x @ (q * s) is this kernel:
#
#   * a thread owns 16 neighbouring output columns and reads them as one 16-byte load per row,
#     so a warp reads 512 contiguous bytes of a row at a time;
#   * the 8 row lanes of a block (threadIdx.y) take every 8th row of the block's row range,
#     then add their sums in shared memory;
#   * a row range never crosses a scale block, so the scale multiplies the range's sum once;
#   * each block writes one partial row [n_out]; the last block of a column tile to finish
#     adds the tile's partial rows in row order. No float atomics: the sum is the same on
#     every run, and one launch gives y.
#
# Row ranges are 256 rows for Grok-1's experts and shorter for smaller matrices, so that every
# product has ~1000 blocks to spread over the GPU's 132 multiprocessors (an H200 read a key
# projection, 6144 x 1024, at 150 GB/s with 48 blocks of 256 rows).

GEMV_COLUMNS = 16        # output columns per thread (one 16-byte load of int8)
GEMV_WARPS = 32          # threads along the columns (blockDim.x)
GEMV_LANES = 8           # row lanes per block (blockDim.y)
GEMV_ROWS = 256          # rows per block at most (a divisor of the scale block's rows)
GEMV_MIN_ROWS = 32       # ... and at least, where the scale blocks allow
GEMV_BLOCKS = 1024       # blocks wanted per launch: ~8 per multiprocessor

_GEMV_SOURCE = r"""
extern "C" __global__ void int8_gemv(
        const float* __restrict__ x,                // [n_in]
        const signed char* __restrict__ w,          // [n_in, n_out], rows 16-byte aligned
        const unsigned short* __restrict__ scales,  // [n_blocks, n_out] bfloat16 bits
        float* __restrict__ partial,                // [n_in / rows, n_out] scratch
        unsigned int* __restrict__ arrived,         // [gridDim.x] zeros, left as zeros
        float* __restrict__ y,                      // [n_out]
        int n_out, int rows, int rows_per_scale) {
    const int COLUMNS = 16, WARPS = 32, LANES = 8;
    __shared__ float sums[LANES][WARPS * COLUMNS];
    __shared__ bool last;
    int tile = blockIdx.x * WARPS * COLUMNS;               // first column of this block
    int col = tile + threadIdx.x * COLUMNS;                // first column of this thread
    int row0 = blockIdx.y * rows;
    int me = threadIdx.y * WARPS + threadIdx.x;            // 0 .. 255
    float acc[COLUMNS];
    for (int j = 0; j < COLUMNS; j++) acc[j] = 0.0f;
    if (col < n_out) {
        #pragma unroll 4
        for (int r = row0 + threadIdx.y; r < row0 + rows; r += LANES) {
            int4 packed = *reinterpret_cast<const int4*>(w + (size_t)r * n_out + col);
            const signed char* q = reinterpret_cast<const signed char*>(&packed);
            float xr = x[r];
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) acc[j] += xr * (float)q[j];
        }
    }
    for (int j = 0; j < COLUMNS; j++) sums[threadIdx.y][threadIdx.x * COLUMNS + j] = acc[j];
    __syncthreads();
    // The 256 threads now add the 8 lanes of the 512 columns, two columns each.
    const unsigned short* s = scales + (size_t)(row0 / rows_per_scale) * n_out;
    for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
        float total = 0.0f;
        for (int lane = 0; lane < LANES; lane++) total += sums[lane][c];
        float scale = __uint_as_float((unsigned int)s[tile + c] << 16);   // bf16 -> fp32
        partial[(size_t)blockIdx.y * n_out + tile + c] = total * scale;
    }
    // Count this block in. The tile's last block to arrive sees every partial row (each
    // writer fenced before it was counted) and adds them in row order.
    __threadfence();
    __syncthreads();
    if (me == 0) last = atomicAdd(&arrived[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
        float total = 0.0f;
        for (int b = 0; b < gridDim.y; b++) total += __ldcg(partial + (size_t)b * n_out + tile + c);
        y[tile + c] = total;
    }
    if (me == 0) arrived[blockIdx.x] = 0;
}
"""
_gemv_kernel = None


def gemv_fits(weight) -> bool:
    """Whether int8_gemv can take this CuPy weight: 16-byte rows on a 16-byte aligned start."""
    return weight.shape[1] % GEMV_COLUMNS == 0 and weight.data.ptr % 16 == 0 and \
        weight.flags.c_contiguous


def int8_gemv(x, weight, scales):
    """One token on the GPU: x [1, in] float32 @ (weight [in, out] int8, scales [B, out] bf16
    bits as uint16) -> [1, out] float32, reading each weight byte once (see above)."""
    import cupy

    global _gemv_kernel
    if _gemv_kernel is None:
        _gemv_kernel = cupy.RawKernel(_GEMV_SOURCE, "int8_gemv")
    n_in, n_out = weight.shape
    grid, block, rows, rows_per_scale = gemv_launch(n_in, n_out, scales.shape[0])
    partial = cupy.empty((grid[1], n_out), dtype=cupy.float32)
    y = cupy.empty((1, n_out), dtype=cupy.float32)
    _gemv_kernel(grid, block, (cupy.ascontiguousarray(x[0], dtype=cupy.float32), weight,
                               cupy.ascontiguousarray(scales), partial,
                               cupy.zeros(grid[0], dtype=cupy.uint32), y, cupy.int32(n_out),
                               cupy.int32(rows), cupy.int32(rows_per_scale)))
    return y


def gemv_launch(n_in: int, n_out: int, n_scale_blocks: int):
    """The kernel's launch: (grid, block, rows per block, rows per scale block)."""
    rows_per_scale = n_in // n_scale_blocks
    rows = math.gcd(rows_per_scale, GEMV_ROWS)          # a block's rows stay in one scale block
    tiles = -(-n_out // (GEMV_WARPS * GEMV_COLUMNS))
    while rows % 2 == 0 and rows > GEMV_MIN_ROWS and tiles * (n_in // rows) < GEMV_BLOCKS:
        rows //= 2
    return (tiles, n_in // rows), (GEMV_WARPS, GEMV_LANES), rows, rows_per_scale
