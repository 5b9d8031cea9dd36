# %% [markdown]
# # Lesson 15: fast paths, on a CPU and on a GPU
#
# **Goal.** See why decoding one token is a race to read int8 bytes, how minigrok's fast
# paths run that race on a CPU (numpy, or a small C kernel) and on a GPU (a CUDA kernel),
# and what limits each; why a GPU also needs the whole layer in a few kernels; then where
# Grok-1's 64 layers go when a GPU has too little memory.
#
# **The idea.** One token's product with an int8 weight, y = x (q * s), reads every byte of
# q once and does 2 flops per byte: far too little work to keep a processor busy, so the
# time is the time to *read* the bytes. The teaching path, `x @ dequantize(W)` (lesson 03),
# first writes a float32 copy of W (4 bytes per weight) and then reads it back: five memory
# trips per byte instead of one. The fast paths never hold that copy:
#
# * **CPU, numpy** (`cpu.int8_matmul`): widen a cache-sized tile of the weight to float32,
#   multiply it where it lies (BLAS), next tile; the threads share the columns (numpy
#   releases the GIL in both steps). The scales wait until a whole row block is summed:
#   $x_b (q_b s_b) = (x_b q_b) s_b$. For a few tokens a tile spans a thread's whole share of
#   the columns, read in long runs; for many (a prompt) it is 256 rows deep, so that BLAS
#   has work enough per weight to run at its peak (see "Many tokens" below).
# * **CPU, compiled** (`native.native_matmul`): the same sums in ~100 lines of C
#   (`kernels/int8_matmul.c`, built on first use with the system's C compiler), which widens
#   8 int8 at a time in registers right where it multiplies them, one scale block per
#   call; the blocks (or, for one block, the columns) are split between threads. One to
#   eight tokens take it where a compiler exists.
# * **GPU** (`gemv.int8_gemv`): one thread owns 16 output columns, reads their 16 int8 of a
#   row as a single 16-byte load, and multiplies as it reads; 8 row lanes per block add up
#   in shared memory; each block's row range stays inside one scale block; the last block
#   of each column tile adds the partial rows.
#
# **The code.** All of it is the engine, `minigrok/engine/`, outside the reference the other
# lessons read; the tests hold every fast path to the reference's `x @ dequantize(W)`.
# `cpu.py` (the numpy path), `native.py` (the compiled one), `threads.py` (the shared pool
# `parallel_map`, `split_range` cutting columns between threads, `blas_threads`),
# `cpu_decode.py` (a decoded token's products four batches a layer, so that neither thread
# waits for the other between them), `gemv.py`
# and `decode.py` (the GPU's products and decode layer), `kernels/` (the C and CUDA sources
# `int8_matmul.c`, `gemv.cu`, `decode.cu`; `kernels.source(name)` reads one), `weights.py`:
# `product` (which path a product takes, behind `Int8Weight(weight, scales).matmul(x)`),
# `placement.py` (the GPU memory plan), `stream.py` (copying streamed layers to the GPU);
# `tests/gpu_profile.py` (where a GPU decode step's time goes).

# %%
import time

import _common as C
import numpy as np
from minigrok.bench import read_buffer, read_seconds
from minigrok.engine import cpu, gemv, native
from minigrok.engine.placement import plan, reserve_bytes
from minigrok.environment import num_threads
from minigrok.formats.checkpoint import layer_bytes
from minigrok.reference import quant
from minigrok.reference.attention import context

args = C.setup(15, "fast paths, on a CPU and on a GPU")
G = C.GROK1


def best_time(fn, repeats=7):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# %% [markdown]
# ## The CPU race
# One token against a 4096 x 8192 int8 matrix (32 MB; a Grok-1 expert matrix is 201 MB):
# the yardstick, a loop that only reads 1 GiB of memory on all threads
# (`kernels/read_memory.c`; no product can read its weights faster), numpy's float32
# matrix-vector product, numpy's int8 -> float32 widening alone (the numpy path's ceiling:
# every byte must be widened once), the teaching path, the numpy path and the compiled
# kernel, each on one thread and on all of them.

# %%
rng = np.random.default_rng(15)
n_in, n_out = 4096, 8192
qw = quant.QuantizedWeight8bit(rng.integers(-127, 128, (n_in, n_out), dtype=np.int8),
                               quant.f32_to_bf16(rng.uniform(1e-3, 2e-3, (8, n_out)).astype(np.float32)))
x = rng.standard_normal((1, n_in)).astype(np.float32)
scales = quant.bf16_to_f32(qw.scales)
nbytes = qw.weight.nbytes

memory = read_buffer()                                             # 1 GiB, larger than any cache
YARDSTICK = "memory read\n(yardstick)"
rates = {YARDSTICK: memory.nbytes / best_time(lambda: read_seconds(memory), repeats=5)}
del memory
dense = np.ones((n_in, 4 * n_out), dtype=np.float32)               # 128 MB of float32
v = np.ones(n_in, dtype=np.float32)
rates["float32 GEMV\n(numpy)"] = dense.nbytes / best_time(lambda: v @ dense)
del dense
buf = np.empty((cpu.CHUNK_ELEMENTS // n_out, n_out), dtype=np.float32)
rates["widen int8\n(1 thread)"] = nbytes / best_time(
    lambda: [np.copyto(buf, qw.weight[r:r + len(buf)], casting="unsafe")
             for r in range(0, n_in, len(buf))])
rates["x @ dequantize(W)\n(teaching)"] = nbytes / best_time(lambda: x @ quant.dequantize(qw))
threads = num_threads()
chunk = cpu.CHUNK_ELEMENTS // n_out                    # a chunk size selects the numpy path
NUMPY = f"numpy path\n{threads} threads"
rates["numpy path\n1 thread"] = nbytes / best_time(
    lambda: cpu.int8_matmul(x, qw.weight, scales, chunk_rows=chunk, threads=1))
rates[NUMPY] = nbytes / best_time(
    lambda: cpu.int8_matmul(x, qw.weight, scales, chunk_rows=chunk, threads=threads))
kernel = native.native_kernel()
colors = ["black", "tab:gray", "tab:gray", "tab:red", "tab:blue", "tab:blue"]
if kernel is None:
    print("(no C compiler here, or MINIGROK_NATIVE=0: only the numpy path runs)")
else:
    for n in (1, threads):
        rates[f"compiled\n{n} thread{'s' * (n > 1)}"] = nbytes / best_time(
            lambda: native.native_matmul(x, qw.weight, scales, kernel, threads=n))
    colors += ["tab:green", "tab:green"]
for name, rate in rates.items():
    C.measured(name.replace("\n", " "), f"{rate / 1e9:.1f} GB/s")
best = max(rates[NUMPY], rates.get(f"compiled\n{threads} threads", 0))
ratio = best / rates[YARDSTICK]
print(f"fastest / yardstick = {ratio:.2f}: what `minigrok bench` reports as kernel_efficiency")

fig, ax = C.plt.subplots(figsize=(8.5, 3))
ax.bar(range(len(rates)), [r / 1e9 for r in rates.values()], color=colors)
ax.set_xticks(range(len(rates)), list(rates), fontsize=7)
ax.set_ylabel("GB/s of weights read")
ax.set_title(f"one token x int8 matrix on this CPU ({threads} threads; measured, varies by run)")
fig.tight_layout()
C.save_figure(fig, "int8_throughput", measured=True)

# %% [markdown]
# Read the bars from the left. numpy widens int8 at a few GB/s per core, well below what
# memory delivers, so on a small CPU the widening, not the memory, sets the numpy path's
# pace: it can only approach "widen" times the number of cores. (On the 2-core development
# machine: widening 5-9 GB/s per core, the memory read 29-33 GB/s, a full-width Grok-1 layer
# at ~6 GB/s of int8: efficiency ~0.2.) The compiled kernel never writes the float32 copy:
# each 8 (AVX2) or 16 (AVX-512) weights go from memory to a register, are widened there and
# multiplied at once; on the same machine it reads a layer's products at 25-28 GB/s, 0.8-0.9
# of the memory read (a small matrix like this one may sit in the last-level cache and
# beat the yardstick). Read `add_rows` in `minigrok/engine/kernels/int8_matmul.c`: the
# plain-C loop under the AVX2 one is the same arithmetic, for CPUs without AVX2.
#
# ## Why BLAS is held to one thread
# OpenBLAS starts its own threads inside every product. Inside minigrok's own split that
# means 2 x 2 threads on 2 cores, and they wait for each other at every chunk.
# `threads.blas_threads(1)` sets OpenBLAS's thread count through its C API for the duration;
# `cpu.py` imports it by name, so replacing `cpu.blas_threads` with a do-nothing context
# lets OpenBLAS run free for one measurement.

# %%
import contextlib

saved = cpu.blas_threads
cpu.blas_threads = lambda n: contextlib.nullcontext()           # let OpenBLAS do as it likes
try:
    fought = nbytes / best_time(
        lambda: cpu.int8_matmul(x, qw.weight, scales, chunk_rows=chunk, threads=threads))
finally:
    cpu.blas_threads = saved
C.measured(f"numpy path, {threads} threads, BLAS left to start its own", f"{fought / 1e9:.1f} GB/s")
C.measured(f"numpy path, {threads} threads, BLAS held to one", f"{rates[NUMPY] / 1e9:.1f} GB/s")

# %% [markdown]
# ## Many tokens: the tile's depth
# A prompt's tokens all meet the same weights, so each widened weight serves T products and
# the work becomes arithmetic: 2 T flops per weight. A tile a few rows deep (the
# one-token shape) hands BLAS products only that few rows deep, and each step writes and
# re-adds the whole [T, n_out] partial sum: memory traffic again. Deeper tiles keep the
# partial sum of a few thousand columns in cache while BLAS runs a real matrix product.
# (On the 2-core development machine, 512 tokens x a 6144 x 32768 expert matrix: 57 GFLOP/s
# in whole rows 32 at a time, 118-134 in 256 x 4096 tiles, the default beyond 8 tokens.)

# %%
xs = rng.standard_normal((256, n_in)).astype(np.float32)
flops = 2 * xs.shape[0] * n_in * n_out
# 32 rows: the depth of whole-row tiles on a 32768-wide expert matrix
for rows in (32, cpu.TILE_ROWS):
    seconds = best_time(lambda: cpu.int8_matmul(xs, qw.weight, scales, chunk_rows=rows),
                        repeats=3)
    C.measured(f"{xs.shape[0]} tokens, tiles {rows} rows deep", f"{flops / seconds / 1e9:.0f} GFLOP/s")

# %% [markdown]
# ## The GPU kernel, block by block
# `gemv.int8_gemv` launches a grid of (column tiles of 512, row ranges); `gemv.gemv_launch`
# picks ranges as long as leaves ~512 blocks for the GPU's 132 multiprocessors, never
# spanning two scale blocks. Each block writes one partial row, already multiplied by its
# scale block's scales; the last block of a column tile to finish adds the tile's partial
# rows (its 8 row lanes take every 8th partial row, then the lanes are added in order), so
# one launch gives y and the sum is the same on every run. (A prefill's few tokens take the
# same source compiled for 4 tokens, `int8_gemv_tokens`: each thread keeps 4 x 16 sums and
# widens each weight once for all four.) Here is the same decomposition
# in numpy, so you can check the arithmetic without a GPU (the kernel's source is
# `minigrok/engine/kernels/gemv.cu`).

# %%
grid, block, rows, rows_per_scale = gemv.gemv_launch(n_in, n_out, qw.scales.shape[0])
partial = np.stack([(x[0, r:r + rows] @ qw.weight[r:r + rows].astype(np.float32))
                    * scales[r // rows_per_scale] for r in range(0, n_in, rows)])
lanes = [partial[lane::gemv.GEMV_LANES].sum(axis=0) for lane in range(gemv.GEMV_LANES)]
y_blocks = sum(lanes[1:], lanes[0])
print(f"grid: {grid[0]} column tiles x {grid[1]} row ranges of {rows} rows; "
      f"partial rows {list(partial.shape)}")
C.peek("kernel decomposition, summed", y_blocks)
C.peek("x @ dequantize(W)", (x @ quant.dequantize(qw))[0])
print(f"max |difference| {np.abs(y_blocks - (x @ quant.dequantize(qw))[0]).max():.2e} "
      "(float32 summation order only)")
try:
    import cupy
    cupy.cuda.runtime.getDeviceCount()
except Exception as e:                                           # no CuPy, or no GPU
    cupy = None
    print(f"(no GPU here: {type(e).__name__}; `bash tests/gpu_check.sh` runs the kernel's checks)")
if cupy is not None:
    y = gemv.int8_gemv(cupy.asarray(x), cupy.asarray(qw.weight), cupy.asarray(qw.scales))
    C.measured("the CUDA kernel on this GPU, max |difference|",
               f"{np.abs(y.get()[0] - y_blocks).max():.2e}")

# %% [markdown]
# ### Widening a byte without converting it
# On a GPU, int8 -> float32 is an instruction of its own (I2F), and Hopper issues it at 16
# per clock per multiprocessor, an eighth of its multiply-add rate: for one token,
# converting an expert's 201 M bytes takes about as long as reading them. So the kernel
# builds the float's bits instead. Flipping a byte's top bit gives q + 128 (0..255); put in
# the low byte of 2^23's mantissa, where float32 numbers are exactly 1 apart, it makes the
# float 2^23 + 128 + q, and one subtraction of 2^23 + 128 leaves q, exactly. A byte
# permute and a subtraction each run at several times I2F's rate. All 256 bytes, in numpy:

# %%
q_all = np.arange(-128, 128).astype(np.int8)
bits = np.uint32(0x4B000000) | (q_all.view(np.uint8) ^ np.uint8(0x80)).astype(np.uint32)
widened = bits.view(np.float32) - np.float32(2**23 + 128)
assert np.array_equal(widened, q_all.astype(np.float32))
print(f"2^23 + 128 + q - (2^23 + 128) == q for all {q_all.size} bytes; e.g. q = -128 -> "
      f"bits {bits[0]:#010x} = {bits[:1].view(np.float32)[0]:.0f}")

# %% [markdown]
# ## A whole layer for one token: `decode.decode_layer`
# A fast product is not enough on a GPU. The teaching layer (lesson 09) is ~150 small CuPy
# operations, and each costs 5-200 us of *host* time to launch, whatever its size. Measured
# on an H200 (2026-11-27, `tests/gpu_profile.py`) for one full-width Grok-1 layer, whose
# 1.3 GB of active int8 take 0.31 ms to read at the card's 4.2 TB/s:
#
# | one more layer in a decode step (`bench`'s `layer_decode_s`) | time |
# |---|---|
# | teaching code (the reference's `decoder_layer`, which the engine runs given a `trace`) | 4.0-4.5 ms |
# | `decode.decode_layer`, one launch per expert and matrix (22 launches) | 0.69-0.72 ms |
# | `decode.decode_layer`, both experts in each launch (16 launches) | 0.51 ms |
# | `decode.decode_layer`, query, key and value in one launch too (14 launches) | 0.52 ms |
#
# `decode_layer` (in `minigrok/engine/decode.py`, its kernels in `kernels/decode.cu`) is the
# teaching layer rewritten as a few kernels; the engine's GPU `layer_fn` runs it in place of
# the reference's `decoder_layer` for one token:
# one RMSNorm per launch, RoPE and the cache write in one, attention for the new token in
# two (`decode.attend`, next section), the router's softmax and top-2
# in one, the expert products by `gemv.int8_gemv_routed`, which reads the chosen experts'
# indices in GPU memory so that the host never waits for the router, and takes both
# experts' up and gate products in one launch (a third grid dimension), their down
# products in another; `gemv.int8_gemv_three` does the query, key and value products in one.
# Each kernel is the teaching formula in the teaching order, compiled without fused
# multiply-adds, and
# `tests/test_cupy.py` holds the layer to `decoder_layer` on random layers, positions and
# padding. What was left then: the host's time to queue the 14 launches, ~0.57 ms a layer,
# about as long as the GPU takes. So the launches are now made ahead (`decode.decode_plan`):
# every buffer a step writes is made once per GPU at load, the launches are bound to the
# weights and the KV cache at the first step, the token's position is read from GPU memory
# instead of being passed in, and from the second step on the layer's 15 launches are
# replayed as one CUDA graph: two launches a layer for the host. (Built and tested against
# the simulated CuPy and the emulated kernels; not yet timed on a GPU.)

# %% [markdown]
# ## Attention over a long cache, in parts: `decode.attend`
# A new token's attention reads the whole KV cache: 67 MB per layer at 8192 cached tokens on
# Grok-1, a twentieth of its weights. But read by a few blocks, one row after another, its
# time is set by the latency of each read, not by the bytes: estimated at about as long as
# the rest of the layer. To read it at the memory's speed, many blocks must read at once,
# and each cache row should be read once, not once for each of the 6 query heads that share
# its kv head. So `decode.attend` gives each GPU block one kv head
# and a chunk of `decode.ATTENTION_CHUNK` rows (8 kv heads x 128 chunks of 64 rows = 1024
# blocks for 8192 rows); a block does the whole softmax and weighted sum over its own chunk and keeps its
# scores' maximum m_c and sum of exponentials l_c. A second kernel then adds the chunks'
# answers, each weighted by its share of the whole softmax, l_c exp(m_c - m) / sum over the
# chunks of the same (m: the largest m_c). That is exact algebra, not an approximation; in
# numpy, for one query head:

# %%
rng = np.random.default_rng(0)
S, d, chunk = 1000, 128, 128
q_head = rng.standard_normal((1, 1, 1, d)).astype(np.float32)
k, v = (rng.standard_normal((S, 1, d)).astype(np.float32) for _ in range(2))
keep = rng.random(S) < 0.9                                       # some padding
whole = context(q_head, k, v, keep, S - 1, d**-0.5).ravel()   # the teaching attention

parts, tops, sums = [], [], []
for c0 in range(0, S, chunk):                                  # what each block does
    s = 30 * np.tanh((k[c0:c0 + chunk, 0] @ q_head.ravel()) * d**-0.5 / 30)
    s = np.where(keep[c0:c0 + chunk], s, np.float32(-1e30))
    e = np.exp(s - s.max())
    parts.append(e / e.sum() @ v[c0:c0 + chunk, 0])
    tops.append(s.max())
    sums.append(e.sum())
share = np.array(sums) * np.exp(np.array(tops) - max(tops))   # attention_combine
in_parts = (share / share.sum()) @ np.array(parts)
C.peek("the teaching attention", whole)
C.peek(f"in {len(parts)} chunks, combined", in_parts)
assert np.abs(in_parts - whole).max() <= 1e-5 * np.abs(whole).max()

# %% [markdown]
# Where the cache is short (up to one chunk) there is one block per kv head and no second
# kernel: the block's own answer is the answer.

# %% [markdown]
# ## On the real model: where 64 layers go
# A Grok-1 layer is 4.6 GiB of int8 (8 experts), the float32 embeddings 3 GiB. The memory plan
# (`placement.plan`; `layer_bytes` from `minigrok/formats/checkpoint.py`) fills the GPUs in
# order with whole layers, keeping a reserve for the working buffers, and streams what is left
# from the host's memory map, copying only the 1.3 GB a token needs from each streamed layer.

# %%
GiB = 2**30
print(f"per layer {layer_bytes(G) / GiB:.2f} GiB; reserve {reserve_bytes(G, False) / GiB:.2f} GiB "
      f"({reserve_bytes(G, True) / GiB:.2f} GiB on a GPU that streams)")
for gpus, free, name in ((1, 79, "1 x H100 80 GB"), (4, 79, "4 x H100 80 GB"),
                         (1, 139, "1 x H200 141 GB"), (3, 139, "3 x H200 141 GB")):
    places = plan(G, [free * GiB] * gpus)
    resident = sum(p.resident for p in places)
    streamed = len(places) - resident
    per_gpu = [sum(p.resident and p.device == g for p in places) for g in range(gpus)]
    # A streamed layer's token copies its 1.3 GB to the GPU: 21 GB/s measured on an H200
    # machine through minigrok's pinned staging buffers (stream.py).
    copy_s = streamed * (G.num_selected_experts * 3 * G.emb_size * G.ffn_size
                         + 2 * G.emb_size * (G.num_q_heads + G.num_kv_heads) * G.key_size) / 21e9
    C.estimate(f"{name}: layers resident per GPU {per_gpu}, streamed {streamed}",
               f"~{copy_s:.1f} s/token of copies" if streamed else "no copies")

# %% [markdown]
# ## Try this
# - `python -m minigrok bench --checkpoint DIR` on a full-width checkpoint
#   (`make-checkpoint --preset grok-1 --num-layers 2`) prints `per layer ... bandwidth
#   efficiency`: the 2-layer time minus the 1-layer time, against the memory read, and the
#   `token efficiency` of a whole token, the logits over the 3.2 GB embedding included.
# - Set `MINIGROK_THREADS=1` and rerun the first cell: how close is one thread to "widen"?
# - Rerun the numpy path with tiles of `1 << 16` and `1 << 23` int8 elements instead of
#   `cpu.CHUNK_ELEMENTS` (`1 << 20`): `cpu.int8_matmul(x, qw.weight, scales,
#   chunk_rows=tile // n_out, tile_elements=tile)`. Why do both get slower?
# - `native.native_kernel(variant="portable")` builds the kernel without its AVX2 loop,
#   `variant="avx2"` without the AVX-512 one: put them in the race. Then run `bench` with `MINIGROK_NATIVE=0`, and compare `layer_decode_s`.
# - Exercise: write the numpy path yourself, within a memory limit:
#   `python -m minigrok exercises check int8_matmul` (stub in `lessons/exercises/`).
# - On a GPU: `python -m minigrok bench --checkpoint DIR --device cuda --gpu-memory 8`
#   streams every layer; compare its tokens/s with the estimate above.
