"""Where one decoded token's time goes on a GPU: run by tests/gpu_check.sh, prints JSON lines.

    python3 tests/gpu_profile.py CHECKPOINT          # needs CuPy and a GPU
    PYTHONPATH=tests/simcupy:. python3 tests/gpu_profile.py CHECKPOINT   # a dry run (~15 s on
        # tiny) against the simulated CuPy: every part but op_costs runs, timings mean nothing

For a checkpoint loaded on ``cuda``: the HBM copy rate; every int8 matrix of layer 0 through
engine/gemv.int8_gemv (GB/s of int8 read), the kernel at other row ranges, and with the
conversion instruction for its widening (gemv.cu built with -DWIDEN_BY_I2F); the host's cost of
one small CuPy operation of each kind (the price of every launch in a decode step); one decode
step through layer 0 by engine/decode.decode_layer (unplanned, planned, replayed as a CUDA graph)
and by the reference's decoder_layer, whole and in parts (median of 20, synchronised), and the
host's time to queue one step or one GEMV (enqueue_us) beside the GPU's time for it; each launch
of that step on its own (decode_kernels: 50 queued back to back, so a launch whose host side is
slower than its kernel is timed at the host's rate; their sum against the step's GPU time shows
the gaps between launches); the decode
attention at cache lengths 16 to 8192 and several chunk sizes; one expert matrix's product
with 4 to 256 tokens by each prefill path; host-to-GPU copy rates of one expert matrix from
the memory map and from pinned memory. Launch-bound shows as
parts far slower than their bytes over the HBM rate, and as the op costs times the op count.
A part that fails prints an "error" row.
"""

import json
import sys
import time

import cupy
import numpy as np

sys.path.insert(0, ".")
from minigrok.api import Model  # noqa: E402
from minigrok.engine import decode, gemv, kernels  # noqa: E402
from minigrok.formats.checkpoint import model_params  # noqa: E402
from minigrok.reference import quant  # noqa: E402
from minigrok.reference.attention import attention, new_cache  # noqa: E402
from minigrok.reference.layer import decoder_layer  # noqa: E402
from minigrok.reference.model import forward  # noqa: E402
from minigrok.reference.moe import expert_weight, expert, moe, route  # noqa: E402
from minigrok.reference.rmsnorm import rms_norm  # noqa: E402


def event_ms(fn, repeats=20):
    """Median GPU milliseconds of fn() between two events (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def wall_ms(fn, repeats=20):
    """Median host milliseconds of fn() followed by a device synchronisation."""
    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        cupy.cuda.Device().synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def per_op_us(fn, n=2000):
    """Host microseconds per call of fn over n calls, synchronised once at the end."""
    fn()
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - t) / n * 1e6


def enqueue_us(fn, n=5):
    """Host microseconds per call to queue fn's GPU work, with no synchronisation until the
    end and too few calls to fill the launch queue. Set beside the GPU's own time per call
    (event_ms), it tells a host-bound step (enqueue longer) from a GPU-bound one."""
    fn()
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t) / n * 1e6
    cupy.cuda.Device().synchronize()
    return us


def emit(**row):
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
          flush=True)


def hbm_rate():
    """GB/s of a 2 GiB device-to-device copy, bytes read plus bytes written."""
    src = cupy.empty(2**31, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    ms = event_ms(lambda: cupy.copyto(dst, src), 10)
    return 2 * src.nbytes / ms / 1e6


def section(fn, *args):
    """Run one part; a failure is reported as a row and the next part still runs."""
    try:
        return fn(*args)
    except Exception as e:          # noqa: BLE001  (a profile reports, it does not stop)
        emit(what="error", part=fn.__name__, error=f"{type(e).__name__}: {e}"[:500])


def main(checkpoint):
    hbm = hbm_rate()
    emit(what="hbm_copy", gb_s=hbm)
    section(op_costs)
    m = Model(checkpoint, "cuda")
    section(gemvs, m, hbm)
    section(gemv_widen_variant, m, hbm)
    section(layer_step, m, hbm)
    section(decode_kernels, m, hbm)
    section(attention_lengths, m, hbm)
    section(prefill_products, m, hbm)
    section(host_copies, m)
    emit(what="done")


def op_costs():
    v = cupy.ones(6144, dtype=cupy.float32)
    a = cupy.ones((1, 6144), dtype=cupy.float32)
    scale = cupy.ones(6144, dtype=cupy.float32)
    ek = cupy.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y", "mg_mul")
    raw = cupy.RawKernel(r'extern "C" __global__ void mg_copy(const float* x, float* y)'
                         r'{ y[threadIdx.x] = x[threadIdx.x]; }', "mg_copy")
    out = cupy.empty_like(v)
    emit(what="op_us", ufunc_mul=per_op_us(lambda: v * v),
         elementwise_kernel=per_op_us(lambda: ek(v, v)),
         raw_kernel=per_op_us(lambda: raw((24,), (256,), (v, out))),
         reduction_sum=per_op_us(lambda: v.sum()),
         rms_norm=per_op_us(lambda: rms_norm(a, scale), 500),
         einsum=per_op_us(lambda: cupy.einsum("tkgd,skd->kgts", a.reshape(1, 8, 6, 128),
                                              cupy.ones((17, 8, 128), cupy.float32)), 500),
         host_sync=per_op_us(lambda: int(v[0]), 500))


def gemvs(m, hbm):
    cfg, layer = m.config, m.params["layers"][0]
    att, experts = layer["multi_head_attention"], layer["moe"]
    x = cupy.random.standard_normal((1, cfg.emb_size), dtype=cupy.float32)
    for name, qw in [(n, att[n]) for n in ("query", "key", "value", "linear")] + \
            [("expert0/" + n, expert_weight(experts[n], 0)) for n in ("linear", "linear_v", "linear_1")]:
        xin = x if qw.weight.shape[0] == cfg.emb_size else \
            cupy.random.standard_normal((1, qw.weight.shape[0]), dtype=cupy.float32)
        ms = event_ms(lambda: gemv.int8_gemv(xin, qw.weight, qw.scales))
        emit(what="gemv", matrix=name, shape=list(qw.weight.shape), ms=ms,
             gb_s=qw.weight.nbytes / ms / 1e6, efficiency=qw.weight.nbytes / ms / 1e6 / hbm,
             host_us=per_op_us(lambda: gemv.int8_gemv(xin, qw.weight, qw.scales), 200),
             enqueue_us=enqueue_us(lambda: gemv.int8_gemv(xin, qw.weight, qw.scales)))
        if name.startswith("expert0"):
            section(gemv_rows_sweep, xin, qw, hbm)


# The kernel's widening against the conversion instruction it replaced ((float)q, I2F, which
# Hopper issues at 16 per clock per multiprocessor: a 201 MB expert is 201 M conversions,
# ~48 us at 1.98 GHz on 132 multiprocessors, as long as reading it): gemv.cu built with
# -DWIDEN_BY_I2F. Both give q exactly, so the outputs must be equal bit for bit.
I2F_OPTIONS = (f"-DGEMV_TOKENS={gemv.GEMV_TOKENS}", "-DWIDEN_BY_I2F")


def gemv_widen_variant(m, hbm):
    """gemv.int8_gemv (byte-permute widening) against the same kernel built with I2F_OPTIONS."""
    layer = m.params["layers"][0]["moe"]
    i2f = cupy.RawKernel(kernels.source("gemv.cu"), "int8_gemv", options=I2F_OPTIONS)
    for name in ("linear", "linear_1"):
        qw = expert_weight(layer[name], 0)
        x = cupy.random.standard_normal((1, qw.weight.shape[0]), dtype=cupy.float32)
        want = gemv.int8_gemv(x, qw.weight, qw.scales)
        grid, block, rows, rows_per_scale = gemv.gemv_launch(*qw.weight.shape, qw.scales.shape[0])
        partial = cupy.empty((grid[1], 1, qw.weight.shape[1]), dtype=cupy.float32)
        y = cupy.empty_like(want)
        args = (x, qw.weight, qw.scales, partial, cupy.zeros(grid[0], dtype=cupy.uint32), y,
                cupy.int32(qw.weight.shape[1]), cupy.int32(rows), cupy.int32(rows_per_scale))
        mine = event_ms(lambda: gemv._gemv_kernel("int8_gemv")(grid, block, args))
        theirs = event_ms(lambda: i2f(grid, block, args))
        i2f(grid, block, args)
        emit(what="gemv_widen", matrix=name, magic_gb_s=qw.weight.nbytes / mine / 1e6,
             i2f_gb_s=qw.weight.nbytes / theirs / 1e6, hbm_gb_s=hbm,
             equal=bool(cupy.array_equal(y, want)))


def gemv_rows_sweep(x, qw, hbm):
    """The kernel at other rows per block than gemv.gemv_launch picks."""
    gemv.int8_gemv(x, qw.weight, qw.scales)                 # compiles the kernel
    n_in, n_out = qw.weight.shape
    rows_per_scale = n_in // qw.scales.shape[0]
    row = {}
    for rows in (32, 64, 128, 256, 512, 1024, 2048):
        if rows_per_scale % rows:
            continue
        grid = (-(-n_out // 512), n_in // rows)
        partial = cupy.empty((grid[1], 1, n_out), dtype=cupy.float32)
        y = cupy.empty((1, n_out), dtype=cupy.float32)
        args = (x, qw.weight, qw.scales, partial, cupy.zeros(grid[0], dtype=cupy.uint32), y,
                cupy.int32(n_out), cupy.int32(rows), cupy.int32(rows_per_scale))
        ms = event_ms(lambda: gemv._gemv_kernel("int8_gemv")(grid, (32, 8), args))
        row[f"rows{rows}_gb_s"] = qw.weight.nbytes / ms / 1e6
    emit(what="gemv_rows", shape=[n_in, n_out], hbm_gb_s=hbm, **row)


def layer_step(m, hbm):
    """One decode step through layer 0 at position 16, whole and in parts."""
    cfg, layer = m.config, m.params["layers"][0]
    att, experts = layer["multi_head_attention"], layer["moe"]
    prompt = cupy.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, 16))
    cache = new_cache(cfg.num_layers, 64, cfg.num_kv_heads, cfg.key_size)
    forward(m.params, cfg, prompt, cache, layer_fn=m.layer_fn)
    keep = cupy.ones(1, dtype=bool)
    h = cupy.random.standard_normal((1, cfg.emb_size), dtype=cupy.float32)
    xn = rms_norm(h, layer["rms_norm"])

    def attend():
        return attention(xn, **att, num_q_heads=cfg.num_q_heads, num_kv_heads=cfg.num_kv_heads,
                         key_size=cfg.key_size, multiplier=cfg.attn_output_multiplier,
                         keep=keep, offset=16, cache=cache, index=0)

    ids = route(xn, layer["router"], cfg.num_selected_experts)[1]
    e = int(ids[0, 0])
    active = sum(w.weight.nbytes for w in att.values()) + \
        2 * sum(expert_weight(experts[n], 0).weight.nbytes for n in experts)

    # the engine's decoding step three ways: made from scratch every call (its buffers
    # allocated, its launches built and queued one by one), from a plan without a graph (the
    # launches made ahead, queued one by one), from a plan with its CUDA graph
    scratch = decode.decode_scratch(layer, cfg, 64)
    plans = {"eager": decode.decode_plan(scratch, graphs=False),
             "graph": decode.decode_plan(scratch)}

    def step(plan=None):
        return decode.decode_layer(h, layer, cfg, keep=keep, offset=16, cache=cache, index=0,
                                   plan=plan)

    def reference_step():            # the reference layer on the same weights
        return decoder_layer(h, layer, cfg, keep=keep, offset=16, cache=cache, index=0)

    want = reference_step()
    ways = {"unplanned": step, **{name: (lambda p=p: step(p)) for name, p in plans.items()}}
    for fn in ways.values():                                         # binds, captures
        fn(), fn()
    floor = active / hbm / 1e6
    figures = {}
    for name, fn in ways.items():
        ms = wall_ms(fn)
        figures.update({f"{name}_ms": ms, f"{name}_efficiency": floor / ms,
                        f"{name}_gpu_ms": event_ms(fn), f"{name}_enqueue_us": enqueue_us(fn),
                        f"{name}_error": float(cupy.abs(fn() - want).max() / cupy.abs(want).max())})
    teaching = wall_ms(reference_step)
    emit(what="layer_decode", ms=figures["graph_ms"], teaching_ms=teaching, floor_ms=floor,
         efficiency=floor / figures["graph_ms"], teaching_efficiency=floor / teaching,
         graph_captured=decode.replayed(plans["graph"]), **figures,
         teaching_gpu_ms=event_ms(reference_step), host_us=per_op_us(ways["graph"], 50),
         rms_norm_ms=wall_ms(lambda: rms_norm(h, layer["rms_norm"])),
         attention_ms=wall_ms(attend),
         moe_ms=wall_ms(lambda: moe(xn, layer["router"], **experts,
                                    num_selected=cfg.num_selected_experts)),
         route_ms=wall_ms(lambda: route(xn, layer["router"], cfg.num_selected_experts)),
         expert_ms=wall_ms(lambda: expert(xn, *(expert_weight(experts[n], e) for n in
                                               ("linear", "linear_v", "linear_1")))))


def each_ms(fn, n=50):
    """GPU milliseconds per call of fn over n calls queued back to back between two events:
    what one launch costs inside a step, where the next is already queued behind it."""
    fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / n


def decode_kernels(m, hbm):
    """Each launch of decode.decode_layer's plan for layer 0 on its own (each_ms), in step
    order, and their sum: set beside layer_decode's graph_gpu_ms and eager_gpu_ms, the rest is
    the time between launches."""
    cfg, layer = m.config, m.params["layers"][0]
    cache = new_cache(1, 64, cfg.num_kv_heads, cfg.key_size)
    plan = decode.decode_plan(decode.decode_scratch(layer, cfg, 64), graphs=False)
    h = cupy.random.standard_normal((1, cfg.emb_size), dtype=cupy.float32)
    decode.decode_layer(h, layer, cfg, keep=cupy.ones(1, dtype=bool), offset=16, cache=cache,
                        index=0, plan=plan)                           # binds, position 16
    us = {f"{i:02d}_{step.func.name}_us": each_ms(step) * 1e3
          for i, step in enumerate(next(iter(plan["bindings"].values()))["steps"])}
    emit(what="decode_kernels", launches=len(us), sum_ms=sum(us.values()) / 1e3, **us)


def attention_lengths(m, hbm):
    """decode.decode_layer's attention (decode.attend) alone for one new token at cache lengths 16
    to 8192 (random cache, no pads), with its blocks of ATTENTION_CHUNK rows and with other
    sizes: where decoding a long context starts to cost more than the layer's 1.3 GB of
    weights, and which chunk to keep. cache_gb: the keys and values it must read."""
    cfg = m.config
    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    kept = decode.ATTENTION_CHUNK
    for S in (16, 1024, 4096, 8192):
        cache_k, cache_v = (cupy.random.standard_normal((S, K, d), dtype=cupy.float32)
                            for _ in range(2))
        keep = cupy.ones(S, dtype=bool)
        q = cupy.random.standard_normal((1, H * d), dtype=cupy.float32)
        for chunk in sorted({kept, 32, 64, 256, 1024}):
            ms = event_ms(lambda: decode.attend(q, cache_k, cache_v, keep, S, cfg, chunk=chunk))
            emit(what="attention_decode", cache_len=S, chunk=chunk, current=chunk == kept, ms=ms,
                 cache_gb=2 * cache_k.nbytes / 1e9, gb_s=2 * cache_k.nbytes / ms / 1e6,
                 hbm_gb_s=hbm)


def prefill_products(m, hbm):
    """Several tokens through one expert's matrices: the int8 kernel GEMV_TOKENS tokens per
    launch (gemv.int8_gemv, a prefill's path up to GEMV_MAX_TOKENS), the int8 widened once
    for cuBLAS on the tensor cores with x in three TF32 parts (gemv.int8_matmul_gpu, beyond),
    the same product in plain float32 (what the TF32 split must beat), and the teaching
    x @ dequantize(W). Where the first two cross is where GEMV_MAX_TOKENS belongs."""
    experts = m.params["layers"][0]["moe"]
    for name in ("linear", "linear_1"):
        qw = expert_weight(experts[name], 0)
        dense = quant.QuantizedWeight8bit(qw.weight, qw.scales)      # for the teaching product
        for T in (4, 16, 32, 64, 256):
            x = cupy.random.standard_normal((T, qw.weight.shape[0]), dtype=cupy.float32)
            tokens_ms = event_ms(lambda: gemv.int8_gemv(x, qw.weight, qw.scales), 10)
            cublas_ms = event_ms(lambda: gemv.int8_matmul_gpu(x, qw.weight, qw.scales), 10)
            teaching_ms = event_ms(lambda: x @ quant.dequantize(dense), 10)
            float32_ms = event_ms(lambda: x @ qw.weight.astype(cupy.float32), 10)
            emit(what="prefill_product", matrix=name, shape=list(qw.weight.shape), tokens=T,
                 int8_kernel_ms=tokens_ms, tf32x3_ms=cublas_ms, float32_ms=float32_ms,
                 teaching_ms=teaching_ms,
                 read_floor_ms=qw.weight.nbytes / hbm / 1e6,
                 equal=bool(cupy.allclose(gemv.int8_gemv(x, qw.weight, qw.scales),
                                          gemv.int8_matmul_gpu(x, qw.weight, qw.scales),
                                          rtol=1e-4, atol=1e-3)))


def host_copies(m):
    """Host -> GPU copies of one expert matrix (what a streamed layer sends), pageable vs pinned."""
    cfg = m.config
    host = model_params(m.checkpoint.params, cfg.num_layers)["layers"][0]["moe"]["linear"]
    host = np.asarray(host.weight[1])
    np.asarray(host).sum()                                   # in the page cache
    dev = cupy.empty(host.shape, host.dtype)
    pinned_mem = cupy.cuda.alloc_pinned_memory(host.nbytes)
    pinned = np.frombuffer(pinned_mem, host.dtype, host.size).reshape(host.shape)
    pinned[...] = host
    emit(what="host_copy", mb=host.nbytes / 1e6,
         pageable_gb_s=host.nbytes / wall_ms(lambda: dev.set(host), 5) / 1e6,
         pinned_gb_s=host.nbytes / wall_ms(lambda: dev.set(pinned), 5) / 1e6,
         memcpy_to_pinned_gb_s=host.nbytes / (per_op_us(
             lambda: np.copyto(pinned, host), 5) / 1e3) / 1e6)


if __name__ == "__main__":
    main(sys.argv[1])
