"""The GPU's int8 products: the GEMV kernels of kernels/gemv.cu for a few tokens, cuBLAS in TF32
for many.

On a GPU the whole int8 matrix can be read at HBM speed, but only by a kernel that reads the
bytes once: dequantising first writes and re-reads 4 bytes per weight (efficiency ~0.04 for a
6144 x 32768 matrix on an H200). One token's product y = x @ (q * s) is this kernel
(kernels/gemv.cu):

  * a thread owns 16 neighbouring output columns and reads them as one 16-byte load per row,
    so a warp reads 512 contiguous bytes of a row at a time;
  * the 8 row lanes of a block (threadIdx.y) take every 8th row of the block's row range,
    then add their sums in shared memory;
  * a row range never crosses a scale block, so the scale multiplies the range's sum once;
  * the int8 becomes float32 by a byte permute and a subtraction, not the conversion
    instruction (I2F), whose rate on Hopper (16 per clock per multiprocessor, ~4.2 T/s on
    an H200) is no higher than the memory's: with it the kernel read experts at 2.87 TB/s
    of the card's 4.2. Measured on an H200 (tests/gpu_profile.py's gemv_widen), the
    byte permute read the expert matrices 1-26% faster, with the same output bit for bit.
  * each block writes one partial row [n_out]; the last block of a column tile to finish
    adds the tile's partial rows, always in the same order. No float atomics: the sum is
    the same on every run, and one launch gives y. (With one thread adding a column's 96
    partial rows one after another, a 6144 x 6144 product took 0.063 ms on an H200; with
    CuPy's separate sum it had taken 0.044 ms.)

Row ranges are as long as leaves ~384 blocks, about 3 for each of an H200's 132
multiprocessors: 1024 rows for Grok-1's experts, 128 for its query, 32 for its key. Longer
ranges leave fewer partial rows for the last block to add, shorter ones more blocks to
spread. Measured on an H200 (tests/gpu_profile.py's gemv_rows), one expert matrix at
512 / 1024 / 2048 rows: 6144 x 32768 at 2795 / 3210 / 2342 GB/s, 32768 x 6144 at 2508 /
3032 / 2324 (384 blocks at 1024 rows; 768 and 192 at the others).
"""

import contextlib
import functools
import math

from ..reference.quant import bf16_to_f32
from ..reference.xp import array_module
from .devices import on_host
from .kernels import source

GEMV_COLUMNS = 16        # output columns per thread (one 16-byte load of int8)
GEMV_WARPS = 32          # threads along the columns (blockDim.x)
GEMV_LANES = 8           # row lanes per block (blockDim.y)
GEMV_ROWS = 1024         # rows per block at most (a divisor of the scale block's rows)
GEMV_MIN_ROWS = 32       # ... and at least, where the scale blocks allow
GEMV_BLOCKS = 384        # blocks wanted per launch: ~3 per multiprocessor
GEMV_TOKENS = 4          # tokens per launch of int8_gemv_tokens (4 x 16 sums per thread)
GEMV_MAX_TOKENS = 32     # more tokens than this go to int8_matmul_gpu (cuBLAS)

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
        _gemv_kernels[name] = cupy.RawKernel(source("gemv.cu"), name,
                                             options=(f"-DGEMV_TOKENS={GEMV_TOKENS}",))
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


# -- launches made ahead --------------------------------------------------------------------
# A decode step's products, each a launch built once with its buffers (the outputs, the
# partial rows, the tile counters) and made every step by calling it: nothing is allocated or
# checked then, and the launches can be captured in a CUDA graph (engine/decode.py). The
# partial rows come from a flat float32 scratch shared by all of a layer's products (they run
# one after another); *_partial_floats says how much each needs.

def _view(scratch, shape):
    n = math.prod(shape)
    if scratch.size < n:
        raise ValueError(f"GEMV scratch of {scratch.size} floats, {n} needed")
    return scratch[:n].reshape(shape)


def _operands(weights):
    """The weights' int8 and scales, which the kernels read as dense rows."""
    for w in weights:
        if not (w.weight.flags.c_contiguous and w.scales.flags.c_contiguous):
            raise ValueError("the GEMV kernels read C-contiguous weights and scales")
    return weights


def _counters(counters, n: int):
    if counters.size < n:
        raise ValueError(f"{counters.size} tile counters, {n} needed")
    return counters


def gemv_partial_floats(weight) -> int:
    """The partial rows gemv_call needs for a weight [in, out]."""
    grid = gemv_launch(*weight.weight.shape, weight.scales.shape[0])[0]
    return grid[1] * weight.weight.shape[1]


def gemv_call(x, weight, y, partial, counters):
    """One token's product as a launch to make later: x [1, in] float32 @ weight (an
    Int8Weight [in, out] on the GPU) -> written to y [1, out] float32. partial: float32
    scratch (gemv_partial_floats); counters: uint32 zeros, one per column tile at least."""
    import cupy

    n_in, n_out = _operands([weight])[0].weight.shape
    grid, block, rows, rows_per_scale = gemv_launch(n_in, n_out, weight.scales.shape[0])
    return functools.partial(_gemv_kernel("int8_gemv"), grid, block, (
        x, weight.weight, weight.scales, _view(partial, (grid[1], 1, n_out)),
        _counters(counters, grid[0]), y, cupy.int32(n_out), cupy.int32(rows),
        cupy.int32(rows_per_scale)))


def three_partial_floats(weights) -> int:
    """The partial rows three_call needs for 1 to 3 weights [in, out_i]."""
    n_in, widths = weights[0].weight.shape[0], tuple(w.weight.shape[1] for w in weights)
    grid = three_launch(n_in, widths, tuple(n_in // w.scales.shape[0] for w in weights))[0]
    return grid[2] * grid[1] * max(widths)


def three_call(x, weights, ys, partial, counters):
    """One token by up to three matrices in one launch, made later: x [1, in] float32;
    weights: 1 to 3 Int8Weight [in, out_i] on the GPU (a decode step's query, key and value);
    ys: [1, out_i] float32 each, written: x @ dequantize(weights[i]), summed as int8_gemv
    sums. partial, counters: as gemv_call's (three_partial_floats)."""
    import cupy

    n_in = _operands(weights)[0].weight.shape[0]
    widths = tuple(w.weight.shape[1] for w in weights)
    rows_per_scale = tuple(n_in // w.scales.shape[0] for w in weights)
    grid, block, rows = three_launch(n_in, widths, rows_per_scale)
    widest = max(widths)
    per = [(w.weight, w.scales, y, cupy.int32(n), cupy.int32(r))
           for w, y, n, r in zip(weights, ys, widths, rows_per_scale)]
    per += [per[-1]] * (3 - len(per))                     # unused slots: never read
    return functools.partial(_gemv_kernel("int8_gemv_three"), grid, block, (
        x, *(a for p in per for a in p), _view(partial, (grid[2], grid[1], widest)),
        _counters(counters, grid[0] * grid[2]), cupy.int32(widest), cupy.int32(rows)))


def routed_partial_floats(weights, k: int) -> int:
    """The partial rows routed_call needs for k experts of 1 or 2 stacked weights."""
    _, n_in, n_out = weights[0].weight.shape
    grid = gemv_launch(n_in, n_out, weights[0].scales.shape[-2], k * len(weights))[0]
    return grid[2] * grid[1] * n_out


def routed_call(x, weights, experts, y, partial, counters):
    """One token's products by its routed experts, in one launch made later: x [X, in]
    float32 (X = 1: the same row for every expert; X = k: row i for expert i); weights: one
    or two stacked Int8Weight [E, in, out] on the GPU; experts: int32 [k] on the GPU, read
    when the launch runs -> written to y [k * len(weights), out] float32, row
    i * len(weights) + j = x_i @ weights[j] of expert experts[i]. partial, counters: as
    gemv_call's (routed_partial_floats)."""
    import cupy

    k, per_expert = experts.shape[0], len(weights)
    a, b = _operands(weights)[0], weights[-1]
    _, n_in, n_out = a.weight.shape
    grid, block, rows, rows_per_scale = gemv_launch(n_in, n_out, a.scales.shape[-2],
                                                    k * per_expert)
    return functools.partial(_gemv_kernel("int8_gemv_routed"), grid, block, (
        x, cupy.int32(0 if x.shape[0] == 1 else n_in), a.weight, a.scales, b.weight, b.scales,
        experts, cupy.int32(per_expert), _view(partial, (grid[2], grid[1], n_out)),
        _counters(counters, grid[0] * grid[2]), y, cupy.int32(n_out), cupy.int32(rows),
        cupy.int32(rows_per_scale)))


def int8_gemv_three(x, weights):
    """three_call made now, into new arrays: -> a tuple of [1, out_i] float32."""
    import cupy

    ys = tuple(cupy.empty((1, w.weight.shape[1]), dtype=cupy.float32) for w in weights)
    partial = cupy.empty(three_partial_floats(weights), dtype=cupy.float32)
    three_call(cupy.ascontiguousarray(x, dtype=cupy.float32), weights, ys, partial,
               _tile_counters(cupy, 3 * _tiles(max(y.shape[1] for y in ys))))()
    return ys


def int8_gemv_routed(x, weights, experts):
    """routed_call made now, into a new array: -> [k * len(weights), out] float32."""
    import cupy

    k = experts.shape[0]
    y = cupy.empty((k * len(weights), weights[0].weight.shape[2]), dtype=cupy.float32)
    partial = cupy.empty(routed_partial_floats(weights, k), dtype=cupy.float32)
    routed_call(cupy.ascontiguousarray(x, dtype=cupy.float32), weights, experts, y, partial,
                _tile_counters(cupy, y.shape[0] * _tiles(y.shape[1])))()
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
