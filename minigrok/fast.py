"""The fast paths: the arithmetic of ``x @ dequantize(W)`` and ``h @ E.T``, arranged for speed.

Decoding one token is a chain of matrix-vector products whose cost is reading the weights:
1.3 GB of int8 per full-width layer. The teaching code (``quant.dequantize``, then ``@``)
widens a whole matrix to float32 first, writing and re-reading 4 bytes for every byte it
needed. Everything here computes the same sums without that: property tests hold these
functions to ``x @ dequantize(W)`` (tests/test_components.py, test_fast.py, and for the GPU
kernel test_cupy.py and test_kernel_emulated.py).

On the CPU, numpy has no int8 matrix product, so the weight is widened a cache-sized tile
at a time and multiplied where it lies; the threads share the columns (numpy releases the
GIL inside the int8 -> float32 copy and inside BLAS). OpenBLAS would start its
own threads inside each small product and fight ours for the same cores (measured on 2 cores:
1.3-4.5 GB/s erratic instead of 6.5 GB/s steady), so it is held to one thread meanwhile.
"""

import contextlib
import ctypes
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .rmsnorm import EPS
from .rope import BASE
from .xp import array_module, on_host

# Elements of int8 weight widened to float32 at a time per thread: 2**20 (a 4 MB buffer, in
# the last-level cache). Smaller chunks measured slower: numpy's per-call cost and the
# partial sums' own traffic grow, the widening does not get faster.
CHUNK_ELEMENTS = 1 << 20
# Rows of a tile of the numpy path, at least (see int8_matmul).
TILE_ROWS = 256
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


def _int8_columns_product(x, weight, scales, out, c0: int, c1: int, chunk_rows: int):
    """out[:, c0:c1] = x @ (weight[:, c0:c1] times its scales), a tile at a time.

    A tile is ``chunk_rows`` rows of int8 (within one scale block) by as many columns as
    make CHUNK_ELEMENTS: it is widened into a float32 buffer in cache and multiplied where
    it lies. The tile's products are summed over the block's rows, then the block's scales
    multiply that sum once, (x_b @ q_b) * s_b == x_b @ (q_b * s_b), and the blocks are added
    in order. No other thread adds into these columns.
    """
    n_in = weight.shape[0]
    rows = n_in // scales.shape[0]                               # rows per scale block
    width = max(1, CHUNK_ELEMENTS // chunk_rows)                 # columns per tile
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


def int8_matmul(x, weight, scales, chunk_rows: int | None = None, threads: int | None = None):
    """x [T, in] float32 @ (weight [in, out] int8 times scales [B, out] float32) -> [T, out].

    On the host. Up to NATIVE_TOKENS tokens go to the compiled kernel (``native_matmul``)
    where there is one; otherwise numpy widens tiles of the weight (``_int8_columns_product``),
    the threads sharing the columns. ``chunk_rows`` (rows per tile) and ``threads`` default
    to the measured best for the shape; setting ``chunk_rows`` forces the numpy path (tests
    use both to force the tiled and the threaded paths on small matrices).
    """
    n_in, n_out = weight.shape
    if x.shape[0] <= NATIVE_TOKENS and chunk_rows is None and weight.flags.c_contiguous:
        kernel = native_kernel()
        if kernel is not None:
            return native_matmul(x, weight, scales, kernel, threads)
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
        _map(lambda c0, c1: _int8_columns_product(x, weight, scales, out, c0, c1, chunk_rows),
             _split(n_out, threads, 64))
    return out


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


# -- CPU: the compiled int8 kernel -------------------------------------------------------------
#
# numpy's int8 -> float32 copy is the ceiling of the path above: ~6 GB/s of int8 per core here
# (`widen_gb_s`), a quarter of what the memory delivers. Widening in registers, where the
# product uses it at once, needs compiled code. This is that code, in C, built on first use
# with the system's C compiler ($CC, else cc) and kept in cache_dir()/native; ctypes releases
# the GIL while it runs, so the work is split between the same threads. Where no compiler
# works, or MINIGROK_NATIVE=0, the numpy path above runs instead (`native_kernel()` says which).
#
#   * the kernel computes one scale block, (x_b @ q_b) * s_b, and native_matmul adds the blocks
#     in order: the same sums, rounded the same way, as the numpy path's;
#   * 16384 columns at a time for one token (16384 / T for T tokens): their sums (64 KB) stay
#     in the second-level cache while four weight rows stream past them; measured on this
#     2-core EPYC with one token, 2048 columns gave 7.5 GB/s on two threads, 8192 gave 12-14;
#     16384 was 5-14% faster again on a 6144 x 32768 matrix alone, equal inside a layer;
#   * the widening is written once in plain C, which compilers vectorise, and once with AVX2
#     intrinsics: one 8-byte load per 8 weights, and the next rows fetched ahead (~30% faster
#     than the plain C on one thread here, ~15% on two); both add each row's product in the
#     same order;
#   * threads take whole scale blocks where there are several (a block's rows lie one after
#     another, so each thread reads one long stretch: 13.4 -> 14.6 GB/s on a 32768 x 6144
#     expert matrix alone, equal inside a layer; 8-token prefill products 10% faster), else
#     columns; either way no sum depends on the number of threads.

_NATIVE_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && !defined(MINIGROK_PORTABLE)
#include <immintrin.h>
#define USE_AVX2 1
/* 8 int8 -> 8 int32 -> 8 float32, in registers */
#define WIDEN(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#endif

enum { TILE = 16384 };       /* partial sums per thread: 64 KB, in the second-level cache */

/* part[t][j] += x[t][k] * w[k][j] for tokens t < T, columns j < n and rows k < rows (at
   most 4), one row after another. part's rows are ld apart, x's x_stride, w's stride. */
static void add_rows(float *restrict part, int64_t ld, const int8_t *restrict w,
                     int64_t stride, const float *restrict x, int64_t x_stride, int64_t T,
                     int rows, int64_t n) {
    int64_t j = 0;
#ifdef USE_AVX2
    if (rows == 4) {
        __m256 x0 = _mm256_set1_ps(x[0]), x1 = _mm256_set1_ps(x[1]);
        __m256 x2 = _mm256_set1_ps(x[2]), x3 = _mm256_set1_ps(x[3]);
        for (; j + 8 <= n; j += 8) {
            if (j % 64 == 0) {
                /* The next 4 rows' bytes, a cache line at a time: the hardware prefetcher
                   stops at each 4 KB page, and the next rows start on new pages. (Past the
                   last row this touches nothing: a prefetch never faults.) */
                for (int k = 4; k < 8; k++)
                    _mm_prefetch((const char *)(w + k * stride + j), _MM_HINT_T1);
            }
            /* each row's 8 weights widened once, for all the tokens */
            __m256 w0 = WIDEN(w + j), w1 = WIDEN(w + stride + j);
            __m256 w2 = WIDEN(w + 2 * stride + j), w3 = WIDEN(w + 3 * stride + j);
            if (T == 1) {                   /* decoding: x's 4 values stay in registers */
                __m256 s = _mm256_loadu_ps(part + j);
                s = _mm256_fmadd_ps(x0, w0, s);
                s = _mm256_fmadd_ps(x1, w1, s);
                s = _mm256_fmadd_ps(x2, w2, s);
                s = _mm256_fmadd_ps(x3, w3, s);
                _mm256_storeu_ps(part + j, s);
                continue;
            }
            for (int64_t t = 0; t < T; t++) {
                const float *xt = x + t * x_stride;
                __m256 s = _mm256_loadu_ps(part + t * ld + j);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[0]), w0, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[1]), w1, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[2]), w2, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[3]), w3, s);
                _mm256_storeu_ps(part + t * ld + j, s);
            }
        }
    }
#endif
    for (int64_t t = 0; t < T; t++) {      /* plain C: the rest, or everything without AVX2 */
        const float *xt = x + t * x_stride;
        float *pt = part + t * ld;
        if (rows == 4) {                    /* spelled out, so that compilers vectorise it */
            const int8_t *w1 = w + stride, *w2 = w1 + stride, *w3 = w2 + stride;
            for (int64_t i = j; i < n; i++) {
                float s = pt[i];
                s += xt[0] * (float)w[i];
                s += xt[1] * (float)w1[i];
                s += xt[2] * (float)w2[i];
                s += xt[3] * (float)w3[i];
                pt[i] = s;
            }
        } else {                            /* the last rows of a scale block, fewer than 4 */
            for (int64_t i = j; i < n; i++) {
                float s = pt[i];
                for (int k = 0; k < rows; k++) s += xt[k] * (float)w[k * stride + i];
                pt[i] = s;
            }
        }
    }
}

/* One scale block: y[:, c0:c1] = (x [T, rows] @ w[:, c0:c1]) * scales[c0:c1], w int8
   [rows, n_out], y [T, n_out]; x's rows are x_stride apart. T at most TILE / 64. */
void int8_matmul(const float *x, int64_t x_stride, const int8_t *w, const float *scales,
                 float *y, int64_t T, int64_t rows, int64_t n_out, int64_t c0, int64_t c1) {
    /* The sums stay on the stack until the end: summing in y itself measured 20-25% slower
       here, and up to 2x slower for some distances between y and w in memory. */
    float part[TILE];
    /* T rows of sums fill TILE, each ld floats apart. ld is kept off multiples of 1024
       floats (4 KB): with 8 tokens and rows 2048 apart, the 8 rows of sums and the 4 weight
       rows (n_out apart, a multiple of 4 KB on Grok-1) all fell into one set of the 8-way
       first-level cache, and 8 tokens took twice as long as 6. */
    int64_t ld = TILE / T / 16 * 16 - 16, cols = ld - 16;
    for (int64_t j0 = c0; j0 < c1; j0 += cols) {
        int64_t n = c1 - j0 < cols ? c1 - j0 : cols;
        for (int64_t t = 0; t < T; t++) memset(part + t * ld, 0, n * sizeof(float));
        for (int64_t r = 0; r < rows; r += 4)
            add_rows(part, ld, w + r * n_out + j0, n_out, x + r, x_stride, T,
                     rows - r < 4 ? (int)(rows - r) : 4, n);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < n; j++)
                y[t * n_out + j0 + j] = part[t * ld + j] * scales[j0 + j];
    }
}
"""

# Tokens per call of the compiled kernel; more tokens go to numpy's tiles and BLAS. Each 8
# weights are widened once for all the tokens, but every token adds its multiply-adds, and
# BLAS's matrix product does those better. Measured here (2 threads, ms, compiled / numpy):
# 6144 x 32768: 1 token 13-15 / 32-37, 4 tokens 31 / 58-60, 8 tokens 63-89 / 86-113,
# 12 tokens 103-133 / 156-180; 32768 x 6144 (8 scale blocks): 8 tokens 58-79 / 61-102,
# 12 tokens 100-104 / 81-93. Again with the kernel's 16384-sum tiles and numpy's column
# tiles (2026-11-27, alternating runs, both shapes): 6 tokens 41-46 / 83-98; 8 tokens
# 87-94 / 85-93 while the rows of sums lay 8 KB apart (see int8_matmul in the C), 73-80 /
# 87-103 since.
NATIVE_TOKENS = 8
_native = {}            # portable (bool) -> the ctypes function, or None: built, or not
_native_lock = threading.Lock()


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and flags, where Linux says."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        import platform
        return platform.machine() + platform.processor()


def _build_native(portable: bool):
    """Compile _NATIVE_SOURCE into the cache (once per source, compiler and CPU); load it."""
    import hashlib
    import subprocess
    import tempfile

    from .cache import cache_dir

    cc = os.environ.get("CC") or "cc"
    attempts = [["-O3", "-march=native"], ["-O3"]]
    if portable:
        attempts = [flags + ["-DMINIGROK_PORTABLE"] for flags in attempts]
    folder = cache_dir() / "native"
    for flags in attempts:
        key = hashlib.sha256("\0".join([_NATIVE_SOURCE, cc, *flags, _cpu_id()]).encode())
        path = folder / f"int8_matmul-{key.hexdigest()[:16]}.so"
        if not path.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Built under a temporary name, renamed when whole: a concurrent process sees
                # either no library or a complete one.
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    out = os.path.join(tmp, path.name)
                    subprocess.run([cc, *flags, "-shared", "-fPIC", "-x", "c", "-", "-o", out],
                                   input=_NATIVE_SOURCE.encode(), capture_output=True,
                                   timeout=120, check=True)
                    os.replace(out, path)
            except (OSError, subprocess.SubprocessError):
                continue
        try:
            fn = ctypes.CDLL(str(path)).int8_matmul
        except (OSError, AttributeError):
            continue
        fn.argtypes = ([ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3
                       + [ctypes.c_int64] * 5)
        fn.restype = None
        return fn
    return None


def native_kernel(portable: bool = False):
    """The compiled int8 product (a ctypes function), or None: MINIGROK_NATIVE=0, or no compiler.

    ``portable`` builds the plain-C loop even where AVX2 is there (the tests check both).
    """
    if os.environ.get("MINIGROK_NATIVE", "1") == "0":
        return None
    with _native_lock:
        if portable not in _native:
            _native[portable] = _build_native(portable)
    return _native[portable]


def native_matmul(x, weight, scales, kernel=None, threads: int | None = None):
    """x [T, in] float32 @ (weight [in, out] int8 times scales [B, out] float32) -> [T, out],
    by the compiled kernel (``native_kernel()`` unless given), NATIVE_TOKENS tokens at a time,
    the scale blocks (or, for one block, the columns) split between threads. The weight must
    be C-contiguous (a checkpoint's are): it is read where it lies."""
    kernel = kernel or native_kernel()
    if kernel is None:
        raise RuntimeError("native_matmul: no compiled kernel (MINIGROK_NATIVE=0, or no C "
                           "compiler): use int8_matmul, which falls back to numpy")
    n_in, n_out = weight.shape
    if not weight.flags.c_contiguous or weight.dtype != np.int8:
        raise ValueError(f"native_matmul: weight must be C-contiguous int8, got {weight.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    scales = np.ascontiguousarray(scales, dtype=np.float32)
    T, blocks = x.shape[0], scales.shape[0]
    rows = n_in // blocks                                        # rows per scale block
    out = np.empty((blocks, T, n_out), dtype=np.float32)         # each block's (x_b @ q_b) * s_b
    if threads is None:
        threads = num_threads() if n_in * n_out >= PARALLEL_ELEMENTS else 1
    # Column pieces per block, 64 columns (a cache line of int8) apart so that two threads never
    # share a line of a row, and at least ~1024 wide: shorter rows stream badly (Grok-1's
    # 6144 x 1024 key ran at 6-7 GB/s on one thread here and 4.4 split over two).
    pieces = max(1, min(-(-threads // blocks), n_out // 1024))
    jobs = [(b, c0, c1) for b in range(blocks) for c0, c1 in _split(n_out, pieces, 64)]
    groups = [jobs[j0:j1] for j0, j1 in _split(len(jobs), threads, 1)]  # in order: one stretch each
    for t0 in range(0, T, NATIVE_TOKENS):
        tokens = min(NATIVE_TOKENS, T - t0)

        def run(*group):
            for b, c0, c1 in group:
                kernel(x[t0:].ctypes.data + 4 * b * rows, n_in,
                       weight.ctypes.data + b * rows * n_out, scales[b].ctypes.data,
                       out[b, t0:].ctypes.data, tokens, rows, n_out, c0, c1)
        if len(groups) == 1:
            run(*groups[0])
        else:
            _map(run, groups)
    y = out[0]
    for b in range(1, blocks):                                   # the blocks in order
        y += out[b]
    return y


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
#   * the int8 becomes float32 by a byte permute and a subtraction, not the conversion
#     instruction (I2F), whose rate on Hopper (16 per clock per multiprocessor, ~4.2 T/s on
#     an H200) is no higher than the memory's: with it the kernel read experts at 2.87 TB/s
#     of the card's 4.2. Measured on an H200 (tests/gpu_profile.py's gemv_widen), the
#     byte permute read the expert matrices 1-26% faster, with the same output bit for bit.
#   * each block writes one partial row [n_out]; the last block of a column tile to finish
#     adds the tile's partial rows, always in the same order. No float atomics: the sum is
#     the same on every run, and one launch gives y. (With one thread adding a column's 96
#     partial rows one after another, a 6144 x 6144 product took 0.063 ms on an H200; with
#     CuPy's separate sum it had taken 0.044 ms.)
#
# Row ranges are as long as leaves ~384 blocks, about 3 for each of an H200's 132
# multiprocessors: 1024 rows for Grok-1's experts, 128 for its query, 32 for its key. Longer
# ranges leave fewer partial rows for the last block to add, shorter ones more blocks to
# spread. Measured on an H200 (tests/gpu_profile.py's gemv_rows), one expert matrix at
# 512 / 1024 / 2048 rows: 6144 x 32768 at 2795 / 3210 / 2342 GB/s, 32768 x 6144 at 2508 /
# 3032 / 2324 (384 blocks at 1024 rows; 768 and 192 at the others).

GEMV_COLUMNS = 16        # output columns per thread (one 16-byte load of int8)
GEMV_WARPS = 32          # threads along the columns (blockDim.x)
GEMV_LANES = 8           # row lanes per block (blockDim.y)
GEMV_ROWS = 1024         # rows per block at most (a divisor of the scale block's rows)
GEMV_MIN_ROWS = 32       # ... and at least, where the scale blocks allow
GEMV_BLOCKS = 384        # blocks wanted per launch: ~3 per multiprocessor
GEMV_TOKENS = 4          # tokens per launch of int8_gemv_tokens (4 x 16 sums per thread)
GEMV_MAX_TOKENS = 32     # more tokens than this go to int8_matmul_gpu (cuBLAS)

_GEMV_SOURCE = f"#define GEMV_TOKENS {GEMV_TOKENS}\n" + r"""
template <int TOKENS>
__device__ void gemv(
        const float* __restrict__ x,                // [TOKENS, n_in]
        const signed char* __restrict__ w,          // [n_in, n_out], rows 16-byte aligned
        const unsigned short* __restrict__ scales,  // [n_blocks, n_out] bfloat16 bits
        float* __restrict__ partial,                // [n_in / rows, TOKENS, n_out] scratch
        unsigned int* __restrict__ arrived,         // [gridDim.x] zeros, left as zeros
        float* __restrict__ y,                      // [TOKENS, n_out]
        int n_out, int rows, int rows_per_scale) {
    const int COLUMNS = 16, WARPS = 32, LANES = 8;
    __shared__ float sums[LANES][WARPS * COLUMNS];
    __shared__ bool last;
    int tile = blockIdx.x * WARPS * COLUMNS;               // first column of this block
    int col = tile + threadIdx.x * COLUMNS;                // first column of this thread
    int row0 = blockIdx.y * rows;
    int me = threadIdx.y * WARPS + threadIdx.x;            // 0 .. 255
    size_t n_in = (size_t)rows * gridDim.y;
    float acc[TOKENS][COLUMNS];
    for (int t = 0; t < TOKENS; t++)
        for (int j = 0; j < COLUMNS; j++) acc[t][j] = 0.0f;
    if (col < n_out) {
        #pragma unroll 4
        for (int r = row0 + threadIdx.y; r < row0 + rows; r += LANES) {
            int4 packed = *reinterpret_cast<const int4*>(w + (size_t)r * n_out + col);
            const unsigned int* quad = reinterpret_cast<const unsigned int*>(&packed);
            float wf[COLUMNS];                             // widened once for all tokens
            // Not (float)q (see above): q + 128 goes into the low mantissa byte of 2^23,
            // where float32 numbers lie 1 apart, and 2^23 + 128 comes off again: q, exactly.
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) {
                unsigned int biased = quad[j / 4] ^ 0x80808080u;     // each byte: q + 128
                wf[j] = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7540 + j % 4))
                        - 8388736.0f;
            }
            #pragma unroll
            for (int t = 0; t < TOKENS; t++) {
                float xr = x[t * n_in + r];
                #pragma unroll
                for (int j = 0; j < COLUMNS; j++) acc[t][j] += xr * wf[j];
            }
        }
    }
    // Token by token, the 256 threads add the 8 lanes of the 512 columns, two columns each.
    const unsigned short* s = scales + (size_t)(row0 / rows_per_scale) * n_out;
    for (int t = 0; t < TOKENS; t++) {
        for (int j = 0; j < COLUMNS; j++) sums[threadIdx.y][threadIdx.x * COLUMNS + j] = acc[t][j];
        __syncthreads();
        for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
            float total = 0.0f;
            for (int lane = 0; lane < LANES; lane++) total += sums[lane][c];
            float scale = __uint_as_float((unsigned int)s[tile + c] << 16);   // bf16 -> fp32
            partial[((size_t)blockIdx.y * TOKENS + t) * n_out + tile + c] = total * scale;
        }
        if (t + 1 < TOKENS) __syncthreads();               // before sums is written again
    }
    // Count this block in. The tile's last block to arrive sees every partial row (each
    // writer fenced before it was counted) and adds them.
    __threadfence();
    __syncthreads();
    if (me == 0) last = atomicAdd(&arrived[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    // Lane l adds partial rows l, l + 8, ... for 16 columns 32 apart (a warp reads 128
    // contiguous bytes, 16 loads in flight per thread); then the lanes, in lane order.
    for (int t = 0; t < TOKENS; t++) {
        float sum[COLUMNS];
        for (int j = 0; j < COLUMNS; j++) sum[j] = 0.0f;
        for (int b = threadIdx.y; b < gridDim.y; b += LANES) {
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) {
                int c = tile + threadIdx.x + j * WARPS;
                if (c < n_out) sum[j] += __ldcg(partial + ((size_t)b * TOKENS + t) * n_out + c);
            }
        }
        for (int j = 0; j < COLUMNS; j++) sums[threadIdx.y][threadIdx.x + j * WARPS] = sum[j];
        __syncthreads();
        for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
            float total = 0.0f;
            for (int lane = 0; lane < LANES; lane++) total += sums[lane][c];
            y[(size_t)t * n_out + tile + c] = total;
        }
        if (t + 1 < TOKENS) __syncthreads();
    }
    if (me == 0) arrived[blockIdx.x] = 0;
}

extern "C" __global__ void int8_gemv(
        const float* x, const signed char* w, const unsigned short* scales, float* partial,
        unsigned int* arrived, float* y, int n_out, int rows, int rows_per_scale) {
    gemv<1>(x, w, scales, partial, arrived, y, n_out, rows, rows_per_scale);
}

// GEMV_TOKENS tokens at once (a prefill): each weight is read and widened once for all.
extern "C" __global__ void int8_gemv_tokens(
        const float* x, const signed char* w, const unsigned short* scales, float* partial,
        unsigned int* arrived, float* y, int n_out, int rows, int rows_per_scale) {
    gemv<GEMV_TOKENS>(x, w, scales, partial, arrived, y, n_out, rows, rows_per_scale);
}

// Up to three products of one token's x in one launch (a decode step's query, key and
// value): product z = blockIdx.z is by w0, w1 or w2, each [n_in, n_z] with its own scales,
// output and scale blocks. The grid's columns cover the widest; a block past its own
// matrix's columns has nothing to do, and returns before it could be counted in.
extern "C" __global__ void int8_gemv_three(
        const float* x, const signed char* w0, const unsigned short* s0, float* y0, int n0,
        int rps0, const signed char* w1, const unsigned short* s1, float* y1, int n1, int rps1,
        const signed char* w2, const unsigned short* s2, float* y2, int n2, int rps2,
        float* partial, unsigned int* arrived, int n_widest, int rows) {
    int z = blockIdx.z;
    int n_out = z == 0 ? n0 : z == 1 ? n1 : n2;
    if (blockIdx.x * 512 >= n_out) return;     // (512 columns a block) before any barrier
    gemv<1>(x, z == 0 ? w0 : z == 1 ? w1 : w2, z == 0 ? s0 : z == 1 ? s1 : s2,
            partial + (size_t)z * gridDim.y * n_widest, arrived + (size_t)z * gridDim.x,
            z == 0 ? y0 : z == 1 ? y1 : y2, n_out, rows, z == 0 ? rps0 : z == 1 ? rps1 : rps2);
}

// A decode step's products by its routed experts, all in one launch. Product z (blockIdx.z)
// is by expert experts[z / per_expert] of stacked weights [E, n_in, n_out] and scales
// [E, n_blocks, n_out]: w_a's for z % per_expert == 0, else w_b's; its x is row
// (z / per_expert) of x when x_step is n_in, the one row when it is 0. The GPU reads the
// experts' indices itself, so the host need not wait for the router to learn them; each
// product has its own partial rows, tile counters and output row z.
extern "C" __global__ void int8_gemv_routed(
        const float* x, int x_step, const signed char* w_a, const unsigned short* s_a,
        const signed char* w_b, const unsigned short* s_b, const int* experts, int per_expert,
        float* partial, unsigned int* arrived, float* y, int n_out, int rows,
        int rows_per_scale) {
    int z = blockIdx.z, slot = z / per_expert;
    size_t e = experts[slot], n_in = (size_t)rows * gridDim.y;
    const signed char* w = z % per_expert == 0 ? w_a : w_b;
    const unsigned short* s = z % per_expert == 0 ? s_a : s_b;
    gemv<1>(x + (size_t)slot * x_step, w + e * n_in * n_out,
            s + e * (n_in / rows_per_scale) * n_out, partial + (size_t)z * gridDim.y * n_out,
            arrived + (size_t)z * gridDim.x, y + (size_t)z * n_out, n_out, rows,
            rows_per_scale);
}
"""
_gemv_kernels = {}
_arrived = {}            # (GPU, stream) -> the kernel's tile counters, zeros between launches


def _tile_counters(cupy, tiles: int):
    """Zeroed uint32 counters for a launch. The kernel leaves them zero, and launches on one
    stream run one after another, so one buffer per GPU and stream serves them all (and
    saves a memset launch per product)."""
    key = cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr
    counters = _arrived.get(key)
    if counters is None or counters.size < tiles:
        counters = _arrived[key] = cupy.zeros(max(tiles, 4096), dtype=cupy.uint32)
    return counters


def gemv_fits(weight) -> bool:
    """Whether the int8 GEMV kernels can take this weight ([in, out], or [E, in, out]
    stacked experts): on the GPU (not a streamed layer's host memory), 16-byte rows on a
    16-byte aligned start."""
    return not on_host(weight) and weight.shape[-1] % GEMV_COLUMNS == 0 and \
        weight.data.ptr % 16 == 0 and weight.flags.c_contiguous


def _gemv_kernel(name: str):
    import cupy

    if name not in _gemv_kernels:
        _gemv_kernels[name] = cupy.RawKernel(_GEMV_SOURCE, name)
    return _gemv_kernels[name]


def int8_gemv(x, weight, scales):
    """A few tokens on the GPU: x [T, in] float32 @ (weight [in, out] int8, scales [B, out]
    bf16 bits as uint16) -> [T, out] float32, reading each weight byte once per launch (see
    above): one token by int8_gemv, more GEMV_TOKENS at a time by int8_gemv_tokens.
    """
    import cupy

    T, (n_in, n_out) = x.shape[0], weight.shape
    name, tokens = ("int8_gemv", 1) if T == 1 else ("int8_gemv_tokens", GEMV_TOKENS)
    x, scales = cupy.ascontiguousarray(x, dtype=cupy.float32), cupy.ascontiguousarray(scales)
    grid, block, rows, rows_per_scale = gemv_launch(n_in, n_out, scales.shape[0])
    partial = cupy.empty((grid[1], tokens, n_out), dtype=cupy.float32)
    out = []
    for t0 in range(0, T, tokens):
        xt = x[t0:t0 + tokens]
        if len(xt) < tokens:                    # a prefill's last few tokens, padded with zeros
            xt = cupy.concatenate([xt, cupy.zeros((tokens - len(xt), n_in), cupy.float32)])
        y = cupy.empty((tokens, n_out), dtype=cupy.float32)
        _gemv_kernel(name)(grid, block, (
            xt, weight, scales, partial, _tile_counters(cupy, grid[0]), y,
            cupy.int32(n_out), cupy.int32(rows), cupy.int32(rows_per_scale)))
        out.append(y[:min(tokens, T - t0)])
    return out[0] if len(out) == 1 else cupy.concatenate(out)


def int8_gemv_three(x, weights):
    """One token by up to three matrices in one launch: x [1, in] float32; weights: 1 to 3
    QuantizedWeight8bit [in, out_i] on the GPU (a decode step's query, key and value) ->
    a tuple of [1, out_i] float32: x @ dequantize(weights[i]), summed as int8_gemv sums."""
    import cupy

    n_in, widths = weights[0].weight.shape[0], tuple(w.weight.shape[1] for w in weights)
    rows_per_scale = tuple(n_in // w.scales.shape[0] for w in weights)
    grid, block, rows = three_launch(n_in, widths, rows_per_scale)
    widest = max(widths)
    partial = cupy.empty((len(weights), grid[1], widest), dtype=cupy.float32)
    ys = tuple(cupy.empty((1, n), dtype=cupy.float32) for n in widths)
    per = [(w.weight, cupy.ascontiguousarray(w.scales), y, cupy.int32(n), cupy.int32(r))
           for w, y, n, r in zip(weights, ys, widths, rows_per_scale)]
    per += [per[-1]] * (3 - len(per))                     # unused slots: never read
    _gemv_kernel("int8_gemv_three")(grid, block, (
        cupy.ascontiguousarray(x, dtype=cupy.float32), *(a for p in per for a in p), partial,
        _tile_counters(cupy, grid[0] * grid[2]), cupy.int32(widest), cupy.int32(rows)))
    return ys


def int8_gemv_routed(x, weights, experts):
    """One token's products by its routed experts, in one launch: x [X, in] float32 (X = 1:
    the same row for every expert; X = k: row i for expert i); weights: one or two stacked
    QuantizedWeight8bit [E, in, out] on the GPU; experts: int32 [k] on the GPU ->
    [k * len(weights), out] float32, row i * len(weights) + j = x_i @ weights[j] of expert
    experts[i]."""
    import cupy

    k, per_expert = experts.shape[0], len(weights)
    a, b = weights[0], weights[-1]
    _, n_in, n_out = a.weight.shape
    grid, block, rows, rows_per_scale = gemv_launch(n_in, n_out, a.scales.shape[-2],
                                                    k * per_expert)
    partial = cupy.empty((grid[2], grid[1], n_out), dtype=cupy.float32)
    y = cupy.empty((grid[2], n_out), dtype=cupy.float32)
    _gemv_kernel("int8_gemv_routed")(grid, block, (
        cupy.ascontiguousarray(x, dtype=cupy.float32), cupy.int32(0 if x.shape[0] == 1 else n_in),
        a.weight, a.scales, b.weight, b.scales, experts, cupy.int32(per_expert), partial,
        _tile_counters(cupy, grid[0] * grid[2]), y, cupy.int32(n_out), cupy.int32(rows),
        cupy.int32(rows_per_scale)))
    return y


def tf32_parts(x):
    """x [T, in] float32 -> [3, T, in]: x = hi + mid + lo exactly, each part exact in TF32.

    TF32 (the tensor cores' float32 input) keeps 10 of float32's 23 mantissa bits. hi keeps
    x's top 11 significant bits, mid the next 11, lo the last 2 (each subtraction is exact),
    so a TF32 product of each part with an int8 weight (8 bits, exact too) is the exact
    float32 product, and only the additions round. (Below 2^-100 a last part can be a
    subnormal that TF32 cannot hold; what it loses is under 2^-126.) Not-finite values stay
    whole in hi.
    """
    xp = array_module(x)
    mask = xp.uint32(0xFFFFE000)                              # sign, exponent, 10 mantissa bits
    hi = (x.view(xp.uint32) & mask).view(xp.float32)
    finite = xp.isfinite(x)
    rest = xp.where(finite, x, xp.float32(0)) - xp.where(finite, hi, xp.float32(0))
    mid = (rest.view(xp.uint32) & mask).view(xp.float32)
    return xp.stack([hi, mid, rest - mid])


@contextlib.contextmanager
def _tf32_matmuls(cupy):
    """Let cuBLAS use TF32 tensor cores for float32 products inside the block (CuPy's own
    setting, which CUPY_TF32=1 sets for a whole process; here it is process-wide only while
    the block runs, and minigrok multiplies on one thread). The simulated CuPy of the tests
    drops the low mantissa bits of its products' inputs under this setting, as TF32 does."""
    try:
        from cupy._core import _routines_linalg as linalg
    except ImportError:
        yield
        return
    saved = linalg.get_compute_type(cupy.float32)
    linalg.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(cupy.float32, saved)


def int8_matmul_gpu(x, weight, scales):
    """Many tokens on the GPU: x [T, in] float32 @ (weight [in, out] int8, scales [B, out]
    bf16 bits) -> [T, out] float32, for a long prefill, on the tensor cores.

    The int8 is widened to float32 once (exact) and multiplied by cuBLAS in TF32 with x cut
    into three TF32-exact parts (``tf32_parts``): three times the multiply-adds, each exact,
    at ~8x the float32 rate of an H100/H200. Each row block's scales multiply its partial
    product afterwards, (x_b q_b) s_b, as on the CPU. Against the teaching
    ``x @ dequantize(W)`` this also skips a full float32 pass over the weight.

    One 2-D product per row block, not one batched product: CuPy hands 2-D products to
    cublasGemmEx with the TF32 compute type, but a batched (3-D) matmul to
    cublasSgemmStridedBatched, which ignores it. Batched, on an H200, 256 tokens through a
    6144 x 32768 expert took 7.3 ms against 3.0 ms for a plain float32 product: three
    float32 products instead of three TF32 ones.
    """
    from .quant import bf16_to_f32      # (it imports this module)

    cupy = array_module(x)
    T, (n_in, n_out), blocks = x.shape[0], weight.shape, scales.shape[0]
    s = bf16_to_f32(scales)                                              # [B, out]
    w = weight.astype(cupy.float32).reshape(blocks, n_in // blocks, n_out)   # [B, rows, out]
    xs = cupy.ascontiguousarray(                                         # [B, 3T, rows]
        tf32_parts(x).reshape(3 * T, blocks, -1).transpose(1, 0, 2))
    with _tf32_matmuls(cupy):
        parts = cupy.stack([xs[b] @ w[b] for b in range(blocks)])        # [B, 3T, out]
    parts = (parts[:, 2 * T:] + parts[:, T:2 * T]) + parts[:, :T]        # lo + mid, then hi
    return (parts * s[:, None, :]).sum(axis=0)                           # [T, out]


def _block_rows(n_in: int, rows_per_scale: int, tiles: int) -> int:
    """Rows per block: the most that stay in one scale block and leave ~GEMV_BLOCKS blocks
    for ``tiles`` column tiles."""
    rows = math.gcd(rows_per_scale, GEMV_ROWS)
    while rows % 2 == 0 and rows > GEMV_MIN_ROWS and tiles * (n_in // rows) < GEMV_BLOCKS:
        rows //= 2
    return rows


def _tiles(n_out: int) -> int:
    return -(-n_out // (GEMV_WARPS * GEMV_COLUMNS))


@functools.lru_cache(maxsize=256)
def gemv_launch(n_in: int, n_out: int, n_scale_blocks: int, products: int = 1):
    """The kernel's launch for ``products`` products of one shape at once: (grid, block, rows
    per block, rows per scale block)."""
    rows_per_scale = n_in // n_scale_blocks
    rows = _block_rows(n_in, rows_per_scale, _tiles(n_out) * products)
    return (_tiles(n_out), n_in // rows, products), (GEMV_WARPS, GEMV_LANES), rows, rows_per_scale


@functools.lru_cache(maxsize=256)
def three_launch(n_in: int, widths: tuple, rows_per_scales: tuple):
    """int8_gemv_three's launch for matrices [n_in, widths[i]]: (grid, block, rows per block).
    The rows are those the matrices' own tiles, all together, need."""
    rows = _block_rows(n_in, math.gcd(*rows_per_scales), sum(map(_tiles, widths)))
    return (_tiles(max(widths)), n_in // rows, len(widths)), (GEMV_WARPS, GEMV_LANES), rows


# -- GPU decoding: one token through a whole layer in 14 launches -----------------------------
#
# A decode step's arithmetic is tiny next to its weights, but the teaching code spends ~150
# small CuPy operations per layer, each ~5-240 us of host time: on an H200 a full-width layer
# took 4-7 ms against 0.31 ms to read its 1.3 GB of weights (attention alone 1.4-2.5 ms, the
# MoE 1.7-2.1 ms). decode_layer does layer.decoder_layer's steps for one token
# with a few kernels below and the int8 GEMV: the teaching formulas in the teaching order,
# compiled without fused multiply-adds so that each product and sum is rounded as CuPy's
# separate operations round it. The router's choice stays on the GPU (int8_gemv_routed reads
# it there), so for resident layers the host never waits and queues the next layer while
# the GPU still reads this one's experts. Both experts go through each of their steps in one
# launch: their up and gate products (4 matrices), gelu_mul, their down products, the gated
# sum; the query, key and value products share one launch too. At one launch per matrix a
# step took 22 launches, and on an H200 the host needed about as long to queue them
# (0.77 ms) as the GPU to run them: one more layer took 0.69 ms. With 14 it takes 0.51 ms,
# of which the host's queueing is still ~0.57 ms when a layer runs alone (docs/performance.md).
# tests/test_cupy.py holds decode_layer to decoder_layer.

# Cache rows per attention_part block. Short enough that a long cache gives every
# multiprocessor several blocks (8192 rows, 8 kv heads: 1024 blocks on an H200's 132), long
# enough that a short one is one block per kv head and needs no attention_combine.
# Measured on an H200 (tests/gpu_profile.py, two runs), Grok-1's heads at 1024 / 4096 / 8192
# cached rows: 0.070 / 0.108-0.116 / 0.143-0.167 ms with 64 rows, 0.106 / 0.124-0.136 /
# 0.154-0.175 with 128; 32 rows won at 1024 (0.058) but lost at 8192 (0.22-0.25).
ATTENTION_CHUNK = 64
SHARED_FLOATS = 12288        # the 48 KB of shared memory a block gets without asking

_DECODE_SOURCE = r"""
#define NEG_INF __int_as_float(0xff800000)

// Sum (or max) over a warp's 32 lanes, by halves; every lane gets the result.
__device__ float warp_reduce(float v, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    return v;
}

// Sum (or max) over the block, whose size is a multiple of 32; every thread gets the result.
// red: 32 floats of shared memory.
__device__ float block_reduce(float v, float* red, bool is_max) {
    v = warp_reduce(v, is_max);
    __syncthreads();                                   // red may be in use by the last call
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    int lane = threadIdx.x % 32;
    v = lane < blockDim.x / 32 ? red[lane] : (is_max ? NEG_INF : 0.0f);
    return warp_reduce(v, is_max);
}

// rmsnorm.rms_norm of one row, plus `residual` when has_residual (layer.py's h + norm(a)).
extern "C" __global__ void rms_norm(const float* x, const float* scale, const float* residual,
                                    int has_residual, float* out, int n, float eps) {
    __shared__ float red[32];
    float sq = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sq += x[i] * x[i];
    float root = sqrtf(block_reduce(sq, red, false) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float y = x[i] / root * scale[i];
        out[i] = has_residual ? residual[i] + y : y;
    }
}

// rope.apply_rope on the token's H query heads and K key heads at position pos (rotate-half:
// feature f turns with feature f + d/2), then attention.py's cache writes at row pos: the
// rotated key, the value and the token's keep flag. One thread per rotated pair.
extern "C" __global__ void rope_and_cache(
        const float* q, const float* k, const float* v, const bool* keep, float* q_rot,
        float* cache_k, float* cache_v, bool* cache_keep, int pos, int H, int K, int d,
        float base) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, half = d / 2;
    if (i < K * d) cache_v[(size_t)pos * K * d + i] = v[i];
    if (i == 0) cache_keep[pos] = keep[0];
    if (i >= (H + K) * half) return;
    int head = i / half, f = i % half;
    float inv_freq = 1.0f / powf(base, (float)(2 * f) / (float)d);
    float angle = (float)pos * inv_freq;
    float c = cosf(angle), s = sinf(angle);
    const float* src = head < H ? q + head * d : k + (head - H) * d;
    float* dst = head < H ? q_rot + head * d : cache_k + ((size_t)pos * K + head - H) * d;
    float x1 = src[f], x2 = src[f + half];
    dst[f] = x1 * c + -x2 * s;
    dst[f + half] = x2 * c + x1 * s;
}

// attention.attention_weights and the weighted sum of values for the token's H = K G query
// heads over cache rows 0..S-1, in two steps. A long cache must be read by many blocks at
// once to be read at the memory's speed, and each row should be read once, not once for each
// of the G query heads that share its kv head. So block b takes kv head b / P with its G
// query heads and rows [c0, c0 + chunk), c0 = (b % P) chunk, P = ceil(S / chunk) blocks per kv
// head: q.k * multiplier, 30 tanh(s / 30), padding keys at -1e30, a softmax over its own rows,
// and those probabilities @ values. That is the answer where P is 1. Otherwise the block also
// leaves its scores' maximum and sum of exponentials, and attention_combine weights the P
// parts: part c counts exp(max_c - max) sum_c / (the same summed over the parts), which is
// exactly the share of the probability its rows get from a softmax over all S rows.
// part: [P, H, d]; part_max, part_sum: [P, H]. Scores live in shared memory: [G, chunk].
extern "C" __global__ void attention_part(
        const float* q_rot, const float* cache_k, const float* cache_v, const bool* cache_keep,
        float* part, float* part_max, float* part_sum, int S, int K, int G, int d, int chunk,
        float multiplier) {
    extern __shared__ float shared[];
    int P = (S + chunk - 1) / chunk, H = K * G;
    int kv = blockIdx.x / P, c = blockIdx.x % P, c0 = c * chunk, n = min(chunk, S - c0);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const float* q = q_rot + (size_t)kv * G * d;       // the kv head's G query heads
    // A warp per key, against each of the G queries in turn. The key loop is unrolled so that
    // several rows are in flight at once: one at a time, the cache would be read at the
    // memory's latency, not its bandwidth.
    #pragma unroll 4
    for (int j = warp; j < n; j += warps) {
        const float* kj = cache_k + ((size_t)(c0 + j) * K + kv) * d;
        bool kept = cache_keep[c0 + j];
        for (int g = 0; g < G; g++) {
            float dot = 0.0f;
            for (int e = lane; e < d; e += 32) dot += q[g * d + e] * kj[e];
            dot = warp_reduce(dot, false);
            float s = dot * multiplier;
            s = 30.0f * tanhf(s / 30.0f);
            if (lane == 0) shared[g * chunk + j] = kept ? s : -1e30f;
        }
    }
    __syncthreads();
    for (int g = warp; g < G; g += warps) {            // a warp per query head: the softmax
        float* p = shared + g * chunk;
        float top = NEG_INF, total = 0.0f;
        for (int j = lane; j < n; j += 32) top = fmaxf(top, p[j]);
        top = warp_reduce(top, true);
        for (int j = lane; j < n; j += 32) {
            p[j] = expf(p[j] - top);
            total += p[j];
        }
        total = warp_reduce(total, false);
        for (int j = lane; j < n; j += 32) p[j] = p[j] / total;
        if (lane == 0) {
            part_max[c * H + kv * G + g] = top;
            part_sum[c * H + kv * G + g] = total;
        }
    }
    __syncthreads();
    // A thread per feature e, eight query heads at a time: each value row is read once for
    // them all, the rows in order (and unrolled, as the keys are).
    for (int e = threadIdx.x; e < d; e += blockDim.x)
        for (int g0 = 0; g0 < G; g0 += 8) {
            int m = min(8, G - g0);
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            #pragma unroll 8
            for (int j = 0; j < n; j++) {
                float v = cache_v[((size_t)(c0 + j) * K + kv) * d + e];
                #pragma unroll                         // (acc stays in registers)
                for (int g = 0; g < 8; g++)
                    if (g < m) acc[g] += shared[(g0 + g) * chunk + j] * v;
            }
            #pragma unroll
            for (int g = 0; g < 8; g++)
                if (g < m) part[((size_t)c * H + kv * G + g0 + g) * d + e] = acc[g];
        }
}

// The P parts of attention_part into out [H, d]: a block per query head.
extern "C" __global__ void attention_combine(const float* part, const float* part_max,
                                             const float* part_sum, float* out, int P, int H,
                                             int d) {
    int h = blockIdx.x;
    float top = NEG_INF, total = 0.0f;
    for (int c = 0; c < P; c++) top = fmaxf(top, part_max[c * H + h]);
    for (int c = 0; c < P; c++) total += part_sum[c * H + h] * expf(part_max[c * H + h] - top);
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < P; c++) {
            float share = part_sum[c * H + h] * expf(part_max[c * H + h] - top) / total;
            acc += share * part[((size_t)c * H + h) * d + e];
        }
        out[(size_t)h * d + e] = acc;
    }
}

// moe.route for one token: softmax over the E router logits, then k rounds of "largest
// left", the lower index winning a tie (jax.lax.top_k). One thread: E is 8.
// ids, gates: [k], by ascending expert index.
extern "C" __global__ void route_top_k(const float* logits, float* probs, int* ids,
                                       float* gates, int E, int k) {
    float top = logits[0], total = 0.0f;
    for (int e = 1; e < E; e++) top = fmaxf(top, logits[e]);
    for (int e = 0; e < E; e++) total += probs[e] = expf(logits[e] - top);
    for (int e = 0; e < E; e++) probs[e] = probs[e] / total;
    bool taken[64] = {false};
    for (int r = 0; r < k; r++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || probs[e] > probs[best])) best = e;
        taken[best] = true;
    }
    // The chosen experts in ascending order, the order moe.moe adds them in.
    for (int e = 0, r = 0; e < E; e++)
        if (taken[e]) {
            ids[r] = e;
            gates[r++] = probs[e];
        }
}

// moe.expert's gelu(x W) * (x V), with moe.gelu's tanh approximation, for every routed
// expert: xwv holds int8_gemv_routed's rows x W, x V of each expert in turn ([2k, width]),
// out is [k, width] and n = k * width.
extern "C" __global__ void gelu_mul(const float* xwv, float* out, int width, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int e = i / width, c = i - e * width;
    float x = xwv[(size_t)2 * e * width + c], v = xwv[(size_t)(2 * e + 1) * width + c];
    out[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))) * v;
}

// moe.moe's sum of gate * expert output over the k routed experts, in its order (from
// zeros, ascending expert index): y [k, n], gates [k] -> m [n].
extern "C" __global__ void add_experts(const float* gates, const float* y, float* m, int k,
                                       int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float total = 0.0f;
    for (int e = 0; e < k; e++) total = total + gates[e] * y[(size_t)e * n + i];
    m[i] = total;
}
"""
_decode_kernels = {}


def _decode_kernel(name: str):
    import cupy

    if name not in _decode_kernels:        # a RawKernel is built for each GPU it runs on
        _decode_kernels[name] = cupy.RawKernel(_DECODE_SOURCE, name, options=("--fmad=false",))
    return _decode_kernels[name]


def decode_fits(h, cache, offset: int, cfg) -> bool:
    """Whether decode_layer takes this step: one token on a GPU, with a cache, and no more
    query heads per kv head than attention_part's shared memory holds scores for."""
    return array_module(h) is not np and h.shape[0] == 1 and cache is not None and \
        cfg.num_q_heads // cfg.num_kv_heads <= SHARED_FLOATS and cfg.num_experts <= 64


def _elementwise(name: str, n: int, *args):
    import cupy

    _decode_kernel(name)((-(-n // 256),), (256,), (*args, cupy.int32(n)))


def _rms_norm(x, scale, residual=None):
    """rmsnorm.rms_norm(x, scale) [+ residual] in one launch: x [1, D] -> [1, D] float32."""
    import cupy

    out = cupy.empty(x.shape, dtype=cupy.float32)
    _decode_kernel("rms_norm")((1,), (1024,), (
        x, cupy.asarray(scale, dtype=cupy.float32), x if residual is None else residual,
        cupy.int32(residual is not None), out, cupy.int32(x.shape[-1]), cupy.float32(EPS)))
    return out


def _rope_and_cache(q, k, v, keep, cache_k, cache_v, cache_keep, offset: int, cfg):
    """rope_and_cache in one launch: q [1, H*d] -> its rotation [1, H*d]; k's rotation and v
    go to cache row ``offset``, keep [1] to cache_keep[offset]."""
    import cupy

    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    q_rot = cupy.empty_like(q)
    _decode_kernel("rope_and_cache")((-(-max((H + K) * d // 2, K * d) // 256),), (256,), (
        q, k, v, keep, q_rot, cache_k, cache_v, cache_keep, cupy.int32(offset), cupy.int32(H),
        cupy.int32(K), cupy.int32(d), cupy.float32(BASE)))
    return q_rot


def _route(logits, top: int):
    """route_top_k in one launch: logits [1, E] -> ids [top] int32 (ascending), gates [top]."""
    import cupy

    E = logits.shape[1]
    probs = cupy.empty(E, dtype=cupy.float32)
    ids, gates = cupy.empty(top, dtype=cupy.int32), cupy.empty(top, dtype=cupy.float32)
    _decode_kernel("route_top_k")((1,), (1,), (logits, probs, ids, gates, cupy.int32(E),
                                               cupy.int32(top)))
    return ids, gates


def attend(q_rot, cache_k, cache_v, cache_keep, S: int, cfg):
    """attention.context for one token on a GPU: attention_part over blocks of
    ATTENTION_CHUNK cache rows, then attention_combine where there are several blocks.

    q_rot: [1, H*d] float32, rotated; cache_k, cache_v: [>= S, K, d]; cache_keep: [>= S]
    bool; S: the rows to attend to -> [1, H*d] float32.
    """
    import cupy

    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    G = H // K
    chunk = min(ATTENTION_CHUNK, SHARED_FLOATS // G)
    P = -(-S // chunk)                                 # blocks per kv head
    out = cupy.empty((1, H * d), dtype=cupy.float32)
    part = out if P == 1 else cupy.empty((P, H, d), dtype=cupy.float32)
    part_max, part_sum = (cupy.empty((P, H), dtype=cupy.float32) for _ in range(2))
    _decode_kernel("attention_part")((K * P,), (128,), (
        q_rot, cache_k, cache_v, cache_keep, part, part_max, part_sum, cupy.int32(S),
        cupy.int32(K), cupy.int32(G), cupy.int32(d), cupy.int32(chunk),
        cupy.float32(cfg.attn_output_multiplier)), shared_mem=G * chunk * 4)
    if P > 1:
        _decode_kernel("attention_combine")((H,), (128,), (
            part, part_max, part_sum, out, cupy.int32(P), cupy.int32(H), cupy.int32(d)))
    return out


def decode_layer(h, layer: dict, cfg, *, keep, offset: int, cache, index: int):
    """layer.decoder_layer for one token on a GPU, in few launches (see above).

    h: [1, D] float32 on the layer's GPU; keep: [1] bool; cache: attention.new_cache, the
    token goes to row ``offset`` of cache layer ``index``. Returns [1, D] float32.
    """
    import cupy

    from . import quant, stream          # (they import this module)
    from .attention import layer_cache
    from .moe import expert_weight

    att, experts = layer["multi_head_attention"], layer["moe"]
    stream.prefetch((att["query"], att["key"], att["value"], att["linear"]), h)
    x = _rms_norm(h, layer["rms_norm"])
    qkv = [att[name] for name in ("query", "key", "value")]
    if all(gemv_fits(w.weight) for w in qkv):
        q, k, v = int8_gemv_three(x, qkv)                             # [1, H*d], [1, K*d] x 2
    else:
        q, k, v = (quant.matmul(x, w) for w in qkv)
    cache_k, cache_v, cache_keep = layer_cache(cache, index, cupy)
    q_rot = _rope_and_cache(q, k, v, keep, cache_k, cache_v, cache_keep, offset, cfg)
    context = attend(q_rot, cache_k, cache_v, cache_keep, offset + 1, cfg)        # [1, H*d]
    h = _rms_norm(quant.matmul(context, att["linear"]), layer["rms_norm_1"], residual=h)
    x = _rms_norm(h, layer["rms_norm_2"])

    logits = x @ cupy.asarray(layer["router"], dtype=cupy.float32)               # [1, E]
    top = cfg.num_selected_experts
    ids, gates = _route(logits, top)
    up, down = (experts["linear"], experts["linear_v"]), (experts["linear_1"],)
    if all(gemv_fits(w.weight) for w in up + down):
        weights = None                   # resident: the GEMV reads the experts' indices itself
        xwv = int8_gemv_routed(x, up, ids)                                       # [2k, F]
    else:                                # streamed: the host must learn which to copy (a wait)
        weights = [[expert_weight(w, e) for w in up + down] for e in ids.get().tolist()]
        stream.prefetch((w for chosen in weights for w in chosen), h)
        xwv = cupy.concatenate([quant.matmul(x, w) for W, V, _ in weights for w in (W, V)])
    act = cupy.empty((top, xwv.shape[1]), dtype=cupy.float32)
    _elementwise("gelu_mul", act.size, xwv, act, cupy.int32(act.shape[1]))       # [k, F]
    if weights is None:
        y = int8_gemv_routed(act, down, ids)                                     # [k, D]
    else:
        y = cupy.concatenate([quant.matmul(act[i:i + 1], chosen[2])
                              for i, chosen in enumerate(weights)])
    m = cupy.empty_like(h)
    _elementwise("add_experts", m.size, gates, y, m, cupy.int32(top))            # [1, D]
    return _rms_norm(m, layer["rms_norm_3"], residual=h)
