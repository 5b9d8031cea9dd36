"""The CPU's compiled kernels, built on first use and called by ctypes: the int8 product
(kernels/int8_matmul.c), the logits over the float32 embedding (kernels/unembed.c) and a
plain memory read, bench's yardstick (kernels/read_memory.c).

numpy's int8 -> float32 copy is the ceiling of engine/cpu.py's tiles: ~6 GB/s of int8 per core here
(`widen_gb_s`), a quarter of what the memory delivers. Widening in registers, where the
product uses it at once, needs compiled code. This is that code, in C, built on first use
with the system's C compiler ($CC, else cc) and kept in cache_dir()/native; ctypes releases
the GIL while it runs, so the work is split between the same threads. Where no compiler
works, or MINIGROK_NATIVE=0, the numpy tiles of engine/cpu.py run instead
(``native_kernel()`` says which).

  * the kernel computes one scale block, (x_b @ q_b) * s_b, and native_matmul adds the blocks
    in order: the same sums, rounded the same way, as the numpy path's;
  * 16384 columns at a time for one token (16384 / T for T tokens): their sums (64 KB) stay
    in the second-level cache while the weight rows stream past them; measured on this
    2-core EPYC with one token, 2048 columns gave 7.5 GB/s on two threads, 8192 gave 12-14;
    16384 was 5-14% faster again on a 6144 x 32768 matrix alone, equal inside a layer;
  * the widening is written once in plain C, which compilers vectorise, once with AVX2
    intrinsics (one 8-byte load per 8 weights, 4 rows a pass, the next rows fetched ahead:
    ~30% faster than the plain C on one thread here, ~15% on two) and, for one token, once
    with AVX-512 (8 rows a pass, 64 columns a step: ~10% faster over a whole layer's
    products, kernels/int8_matmul.c has the figures); all add each row's product in the same
    order;
  * threads take whole scale blocks where there are several (a block's rows lie one after
    another, one long stretch: 13.4 -> 14.6 GB/s on a 32768 x 6144 expert matrix alone,
    equal inside a layer; 8-token prefill products 10% faster), else columns; either way no
    sum depends on the number of threads. native_matmuls makes several products in one
    parallel_map (a decode step's, engine/cpu_decode.py).
"""

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings

import numpy as np

from ..environment import cache_dir, num_threads
from .kernels import source
from .threads import PARALLEL_ELEMENTS, parallel_map, split_range

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
_native = {}            # (name, variant) -> the ctypes function, or None: built, or not
_native_lock = threading.Lock()


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and flags, where Linux says."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        import platform
        return platform.machine() + platform.processor()


def _trusted(path) -> bool:
    """Whether loading ``path`` runs only this user's code: it and its folder belong to this
    user and nobody else may write them. (Whoever can write the kernel cache can run code in
    every minigrok process that loads from it.)"""
    for p in (path, os.path.dirname(path)):
        st = os.stat(p)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            warnings.warn(f"not loading the compiled kernel {path}: {p} is writable by others "
                          "or not yours; using numpy's int8 product instead")
            return False
    return True


# The compiled kernels: name (its source kernels/<name>.c and its C function) -> the
# function's argument types. Each is built into its own library.
_P, _I = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {
    "int8_matmul": ([_P, _I, _P, _P, _P, _I, _I, _I, _I, _I], None),
    "unembed": ([_P, _I, _P, _I, _P, _I, _I, _I], None),
    "read_memory": ([_P, _I], ctypes.c_uint64),
}
# Builds of each kernel: "best" for this CPU (-march=native: AVX-512 where it is there),
# "avx2" without AVX-512, "portable" the plain C loops alone (the tests check all three).
VARIANTS = {"best": [], "avx2": ["-mno-avx512f"], "portable": ["-DMINIGROK_PORTABLE"]}


def build_kernel(name: str = "int8_matmul", variant: str = "best"):
    """Compile kernels/<name>.c into the cache (once per source, compiler, flags and CPU) and
    load it: the ctypes function, or None where nothing compiles. ``native_kernel`` keeps
    what this returns for the rest of the process."""
    code = source(f"{name}.c")
    cc = os.environ.get("CC") or "cc"
    attempts = [["-O3", "-march=native"] + VARIANTS[variant], ["-O3"] + VARIANTS[variant]]
    folder = cache_dir() / "native"
    for flags in attempts:
        key = hashlib.sha256("\0".join([code, cc, *flags, _cpu_id()]).encode())
        path = folder / f"{name}-{key.hexdigest()[:16]}.so"
        if not path.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Built under a temporary name, renamed when whole: a concurrent process sees
                # either no library or a complete one.
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    out = os.path.join(tmp, path.name)
                    subprocess.run([cc, *flags, "-shared", "-fPIC", "-x", "c", "-", "-o", out],
                                   input=code.encode(), capture_output=True,
                                   timeout=120, check=True)
                    os.replace(out, path)
            except (OSError, subprocess.SubprocessError):
                continue
        try:
            if not _trusted(path):
                return None
            fn = getattr(ctypes.CDLL(str(path)), name)
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = SIGNATURES[name]
        return fn
    return None


def native_kernel(name: str = "int8_matmul", variant: str = "best"):
    """The compiled kernel ``name`` (a ctypes function), or None: MINIGROK_NATIVE=0, or no
    compiler. ``variant``: a key of VARIANTS."""
    if os.environ.get("MINIGROK_NATIVE", "1") == "0":
        return None
    with _native_lock:
        if (name, variant) not in _native:
            _native[name, variant] = build_kernel(name, variant)
    return _native[name, variant]


def _product_calls(x, weight, scales, threads: int):
    """One product's kernel calls, x [T, in] (T <= NATIVE_TOKENS) @ (weight [in, out] int8
    times scales [B, out] float32), for ``threads``: -> (calls, out [B, T, out]), each call
    (int8 bytes it reads, the kernel's arguments); out[b] receives block b's (x_b @ q_b) s_b."""
    n_in, n_out = weight.shape
    if not weight.flags.c_contiguous or weight.dtype != np.int8:
        raise ValueError(f"native_matmul: weight must be C-contiguous int8, got {weight.dtype}")
    T, blocks = x.shape[0], scales.shape[0]
    rows = n_in // blocks                                        # rows per scale block
    out = np.empty((blocks, T, n_out), dtype=np.float32)
    # Column pieces per block, 64 columns (a cache line of int8) apart so that two threads never
    # share a line of a row, and at least ~1024 wide: shorter rows stream badly (Grok-1's
    # 6144 x 1024 key ran at 6-7 GB/s on one thread here and 4.4 split over two). Columns
    # are summed alike however they are cut: no sum depends on the number of threads.
    pieces = max(1, min(-(-threads // blocks), n_out // 1024))
    return [(rows * (c1 - c0), (x.ctypes.data + 4 * b * rows, n_in,
                                weight.ctypes.data + b * rows * n_out, scales[b].ctypes.data,
                                out[b].ctypes.data, T, rows, n_out, c0, c1))
            for b in range(blocks) for c0, c1 in split_range(n_out, pieces, 64)], out


def _run_calls(kernel, calls, threads: int):
    """Each call to the thread that has the fewest bytes to read so far (in order, the lowest
    thread on a tie), then every thread's calls in one parallel_map."""
    load, shares = [0] * threads, [[] for _ in range(threads)]
    for cost, args in calls:
        t = load.index(min(load))
        load[t] += cost
        shares[t].append(args)

    def run(share):
        for args in share:
            kernel(*args)
    shares = [(share,) for share in shares if share]
    if len(shares) == 1:
        run(*shares[0])
    else:
        parallel_map(run, shares)


def _blocks_sum(out):
    """out [B, T, n] -> the blocks added in order, [T, n]."""
    y = out[0]
    for b in range(1, len(out)):
        y += out[b]
    return y


def native_matmuls(problems, kernel=None, threads: int | None = None) -> list:
    """Several products by the compiled kernel, all in one parallel_map: problems, a list of
    (x [T, in] float32, weight [in, out] int8 C-contiguous, scales [B, out] float32) -> a
    list of [T, out] float32, each the same bits as native_matmul's.

    Between two products of one parallel_map no thread waits for the other: a decode step's
    query, key and value go together (a 6144 x 1024 key is one piece of work, which alone
    would leave the second thread idle), and so do the two experts' four up products, then
    their two down products (engine/cpu_decode.py). Each thread takes whole pieces of work,
    the next to whichever has the fewest bytes so far; ``threads`` defaults to all for work
    over PARALLEL_ELEMENTS int8 bytes.
    """
    kernel = kernel or native_kernel()
    if kernel is None:
        raise RuntimeError("native_matmul: no compiled kernel (MINIGROK_NATIVE=0, or no C "
                           "compiler): use int8_matmul, which falls back to numpy")
    if threads is None:
        size = sum(w.size for _, w, _ in problems)
        threads = num_threads() if size >= PARALLEL_ELEMENTS else 1
    calls, outs, operands = [], [], []
    for x, weight, scales in problems:
        x = np.ascontiguousarray(x, dtype=np.float32)
        scales = np.ascontiguousarray(scales, dtype=np.float32)
        operands.append((x, scales))                      # alive until the calls have run
        if x.shape[0] > NATIVE_TOKENS or x.shape[1] != weight.shape[0]:
            raise ValueError(f"native_matmuls: x {x.shape} by a weight {weight.shape} (at most "
                             f"{NATIVE_TOKENS} tokens)")
        c, out = _product_calls(x, weight, scales, threads)
        calls += c if x.shape[0] else []                 # (the kernel takes 1 token or more)
        outs.append(out)
    _run_calls(kernel, calls, threads)
    return [_blocks_sum(out) for out in outs]


def native_matmul(x, weight, scales, kernel=None, threads: int | None = None):
    """x [T, in] float32 @ (weight [in, out] int8 times scales [B, out] float32) -> [T, out],
    by the compiled kernel (``native_kernel()`` unless given), NATIVE_TOKENS tokens at a time,
    the scale blocks (or, for one block, the columns) split between threads. The weight must
    be C-contiguous (a checkpoint's are): it is read where it lies."""
    if threads is None:
        threads = num_threads() if weight.size >= PARALLEL_ELEMENTS else 1
    x = np.ascontiguousarray(x, dtype=np.float32)
    ys = [native_matmuls([(x[t0:t0 + NATIVE_TOKENS], weight, scales)], kernel, threads)[0]
          for t0 in range(0, max(x.shape[0], 1), NATIVE_TOKENS)]
    return ys[0] if len(ys) == 1 else np.concatenate(ys)


def native_unembed(h, matrix, kernel=None, threads: int | None = None):
    """h [T, D] float32 @ matrix [V, D].T -> [T, V] float32 by kernels/unembed.c (``kernel``,
    else ``native_kernel("unembed")``), the rows split between threads. The matrix is read
    where it lies, aligned or not; it must be C-contiguous float32 (a checkpoint's is)."""
    kernel = kernel or native_kernel("unembed")
    if kernel is None:
        raise RuntimeError("native_unembed: no compiled kernel (MINIGROK_NATIVE=0, or no C "
                           "compiler): use cpu.matmul_transposed, which falls back to numpy")
    n_rows, dim = matrix.shape
    if not matrix.flags.c_contiguous or matrix.dtype != np.float32:
        raise ValueError(f"native_unembed: matrix must be C-contiguous float32, got {matrix.dtype}")
    h = np.ascontiguousarray(h, dtype=np.float32)
    out = np.empty((h.shape[0], n_rows), dtype=np.float32)
    threads = threads or num_threads()
    parallel_map(lambda r0, r1: kernel(h.ctypes.data, h.shape[0], matrix.ctypes.data, dim,
                                       out.ctypes.data, n_rows, r0, r1),
                 split_range(n_rows, threads, 64))
    return out
