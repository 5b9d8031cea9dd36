"""``minigrok bench``: how fast a checkpoint loads, prefills and decodes, and how much memory it takes.

Memory is sampled from /proc/self/status while the model runs: VmRSS (everything resident,
including the pages of the memory-mapped weights that were read) and RssAnon (memory minigrok
itself allocated: activations, the KV cache, temporary buffers). A memory-mapped checkpoint
should leave RssAnon small however large the model is.

Decoding is bound by reading weights, so its yardstick is the machine's raw read bandwidth
(``read_gb_s``): a loop that only reads a 1 GiB buffer on all threads (kernels/read_memory.c;
on a GPU a reduction over device memory), sampled just before and just after the decode
steps, because a shared machine's bandwidth moves from minute to minute. A decoded token must read every active int8
weight and the embedding once, so ``token_efficiency`` is those bytes at ``read_gb_s`` over
the measured time per token (1.0: decoding as fast as the memory reads). With more than one
layer each decode step also runs through the first layer alone, which gives the time of one
more layer (``layer_decode_s``, the median over the steps) and its ``bandwidth_efficiency``
the same way. numpy's float32 GEMV rate (``gemv_gb_s``) is reported beside it.
"""

import contextlib
import threading
import time

import numpy as np

from .engine.cpu import CHUNK_ELEMENTS
from .engine.decode import replayed
from .engine.devices import backend
from .engine.native import native_kernel
from .engine.threads import parallel_map, split_range
from .engine.weights import StreamedWeight, product
from .environment import num_threads
from .formats.checkpoint import active_int8_bytes
from .reference import quant
from .reference.attention import new_cache
from .reference.model import forward
from .reference.xp import array_module, to_numpy


def _status_mb() -> dict:
    """{'VmRSS': MB, 'RssAnon': MB} of this process (zeros where /proc is missing)."""
    out = {"VmRSS": 0.0, "RssAnon": 0.0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


@contextlib.contextmanager
def peak_memory(interval: float = 0.005, exclude_mb: float = 0.0):
    """Yield a dict whose 'rss_mb' / 'anon_mb' hold the peaks seen while the block runs,
    less ``exclude_mb`` of anonymous memory that is not the model's (bench's read buffer,
    allocated and touched before the block). Its 'interval' (seconds between samples) may be
    changed while the block runs."""
    peaks = {"rss_mb": 0.0, "anon_mb": 0.0, "interval": interval}
    stop = threading.Event()

    def sample():
        while True:
            now = _status_mb()
            peaks["rss_mb"] = max(peaks["rss_mb"], now["VmRSS"] - exclude_mb)
            peaks["anon_mb"] = max(peaks["anon_mb"], now["RssAnon"] - exclude_mb)
            if stop.wait(peaks["interval"]):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        sample_once = _status_mb()
        peaks["rss_mb"] = max(peaks["rss_mb"], sample_once["VmRSS"] - exclude_mb)
        peaks["anon_mb"] = max(peaks["anon_mb"], sample_once["RssAnon"] - exclude_mb)


READ_GIB = 1.0          # the read yardstick's buffer: far larger than any CPU's or GPU's cache


def read_buffer(xp=np, gib: float = READ_GIB):
    """The buffer read_seconds reads: ``gib`` GiB, every page touched (np.ones writes them)."""
    return xp.ones(int(gib * 2**30), dtype=xp.uint8)


def read_seconds(buf) -> float:
    """Seconds to read ``buf`` once: on a CPU by kernels/read_memory.c on all of the engine's
    threads (numpy's XOR reduction where nothing compiles), on a GPU by a CuPy reduction,
    timed between two events on its stream."""
    if isinstance(buf, np.ndarray):
        kernel = native_kernel("read_memory")
        words = buf.view(np.uint64)

        def read(r0, r1):
            if kernel is not None:
                return kernel(buf.ctypes.data + 8 * r0, 8 * (r1 - r0))
            return np.bitwise_xor.reduce(words[r0:r1])
        t = time.perf_counter()
        parallel_map(read, split_range(len(words), num_threads(), 16))
        return time.perf_counter() - t
    xp = array_module(buf)
    start, end = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    buf.view(xp.uint64).sum()
    end.record()
    end.synchronize()
    return xp.cuda.get_elapsed_time(start, end) / 1e3


def gemv_bandwidth(xp=np, gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s at which ``float32 vector @ matrix`` streams a ``gib`` GiB matrix (best of repeats)."""
    n = int((gib * 2**30 / 4) ** 0.5)
    a = xp.ones((n, n), dtype=xp.float32)
    v = xp.ones(n, dtype=xp.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        to_numpy((v @ a)[:1])                       # [:1] syncs a GPU without copying it all
        best = min(best, time.perf_counter() - t)
    del a
    return n * n * 4 / best / 1e9


def widen_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """GB/s of int8 that numpy widens to float32 on all of the engine's threads, chunk by chunk
    into cache as the numpy path does, with no product: the ceiling of that path (the
    compiled kernel, ``cpu_kernel: native``, widens in registers instead)."""
    rows = mib * 2**20 // 8192
    weight = np.ones((rows, 8192), dtype=np.int8)
    chunk = CHUNK_ELEMENTS // 8192

    def widen(r0, r1):
        buf = np.empty((chunk, 8192), dtype=np.float32)
        for c0 in range(r0, r1, chunk):
            np.copyto(buf[:min(chunk, r1 - c0)], weight[c0:c0 + chunk], casting="unsafe")

    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        parallel_map(widen, split_range(rows, num_threads(), chunk))
        best = min(best, time.perf_counter() - t)
    return weight.nbytes / best / 1e9


def int8_kernel_bandwidth(xp, shape=(6144, 32768), repeats: int = 20) -> dict:
    """GB/s of int8 weight read by one token's product, by the engine's fast path
    (weights.product: the compiled kernel or numpy's tiles on a CPU, the int8 GEMV on a GPU)
    and by the reference's ``x @ dequantize(W)``, on a random matrix of Grok-1's expert shape."""
    rng = np.random.default_rng(0)
    w = xp.asarray(rng.integers(-127, 128, shape, dtype=np.int8))
    qw = quant.QuantizedWeight8bit(w, xp.full((1, shape[1]), 0x3C00, dtype=xp.uint16))
    x = xp.asarray(rng.standard_normal((1, shape[0]), dtype=np.float32))

    def seconds(fn):                     # on a GPU, between two events on its stream
        if xp is np:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return xp.cuda.get_elapsed_time(start, end) / 1e3

    # (the reference takes ~1 s a try on a CPU: one try after the warm-up there)
    out = {}
    for name, fn, n in (("int8_gemv_gb_s", lambda: product(x, *qw), repeats),
                        ("dequant_matmul_gb_s", lambda: x @ quant.dequantize(qw),
                         repeats if xp is not np else 1)):
        fn()
        out[name] = w.nbytes / min(seconds(fn) for _ in range(n)) / 1e9
    return out


def _step(m, params, token: int, cache) -> tuple[int, float]:
    """One decode step of Model ``m`` over ``params``: (the greedy next token, its seconds)."""
    t0 = time.perf_counter()
    logits = forward(params, m.config, m.xp.asarray([token]), cache, last_only=True,
                     layer_fn=m.layer_fn)
    return int(to_numpy(logits[0].argmax())), time.perf_counter() - t0


def bench(checkpoint, prompt_len: int = 16, new_tokens: int = 16, device: str = "cpu",
          bandwidth: bool = True, gpu_memory: float | None = None) -> dict:
    """Measure one checkpoint; returns the figures ``minigrok bench --json`` prints."""
    from .api import Model, check_gpu_memory

    check_gpu_memory(device, gpu_memory)
    xp = backend(device)
    result = {"device": device, "prompt_len": prompt_len, "new_tokens": new_tokens}
    if xp is np:
        # Built (or loaded from the cache) now, so that no compiler run lands in the timings.
        result["cpu_kernel"] = "native" if native_kernel() else "numpy"
    if bandwidth:
        result["gemv_gb_s"] = gemv_bandwidth(xp)
        if xp is np:                  # (on a GPU after the load: its memory plan comes first)
            result.update(int8_kernel_bandwidth(xp))
            result["widen_gb_s"] = widen_bandwidth()
    # The read yardstick's buffer: on a CPU allocated before the memory is watched (and
    # subtracted from it: it is not the model's), on a GPU after the load.
    buf = read_buffer() if bandwidth and xp is np else None
    reads = []
    with peak_memory(exclude_mb=buf.nbytes / 2**20 if buf is not None else 0.0) as peaks:
        t0 = time.perf_counter()
        m = Model(checkpoint, device, gpu_memory=gpu_memory)
        result["load_s"] = time.perf_counter() - t0
        if bandwidth and buf is None:
            buf = read_buffer(xp)
        cfg = m.config
        # A fixed, pad-free prompt: the same work on every run.
        prompt = xp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, prompt_len))
        cache = new_cache(cfg.num_layers, prompt_len + new_tokens, cfg.num_kv_heads,
                          cfg.key_size)
        t0 = time.perf_counter()
        logits = forward(m.params, cfg, prompt, cache, last_only=True, layer_fn=m.layer_fn)
        token = int(to_numpy(logits[0].argmax()))
        prefill = time.perf_counter() - t0
        # With more than one layer, every step is also run through the first layer alone (own
        # cache, same token): the difference is what the other layers cost, without the
        # embedding, the final norm and the logits. Step by step, so that a noisy neighbour
        # slows both sides alike; the median ignores the odd step it slows only one of.
        first = dict(m.params, layers=m.params["layers"][:1]) if cfg.num_layers > 1 else None
        if first is not None:
            cache1 = new_cache(1, prompt_len + new_tokens, cfg.num_kv_heads, cfg.key_size)
            forward(first, cfg, prompt, cache1, last_only=True, layer_fn=m.layer_fn)
        # The yardstick is read just before and just after the steps, under the same
        # neighbours. (Read between the steps, it slowed them: 255 against 235 ms a token
        # on 2 full-width layers, the caches and the memory's open pages left cold.)
        reads += [read_seconds(buf) for _ in range(3 if bandwidth else 0)]
        # Decoding allocates little (its cache is made above): memory is sampled less often,
        # since every 5 ms the sampler's wake-ups cost the steps ~3% on 2 cores (4.51-4.57
        # against 4.66-4.67 tokens/s on 2 full-width layers).
        peaks["interval"] = 0.05
        decode, extra = 0.0, []
        for _ in range(new_tokens):
            next_token, seconds = _step(m, m.params, token, cache)
            decode += seconds
            if first is not None:
                extra.append((seconds - _step(m, first, token, cache1)[1])
                             / (cfg.num_layers - 1))
            token = next_token
        reads += [read_seconds(buf) for _ in range(3 if bandwidth else 0)]
        del buf
        if extra:
            result["layer_decode_s"] = float(np.median(extra))
    per_token = active_int8_bytes(cfg) / 1e9
    result.update(
        ttft_s=result["load_s"] + prefill,
        prefill_tok_s=prompt_len / prefill,
        decode_tok_s=new_tokens / decode if new_tokens else None,
        peak_rss_mb=peaks["rss_mb"], peak_anon_mb=peaks["anon_mb"],
        weight_gb_per_token=per_token,
        embedding_gb_per_token=cfg.vocab_size * cfg.emb_size * 4 / 1e9,
        num_layers=cfg.num_layers)
    if reads:
        result["read_gb_s"] = READ_GIB * 2**30 / float(np.median(reads)) / 1e9
    if new_tokens:
        # Bytes a decode step must stream: the active int8 weights and the fp32 embedding.
        streamed = per_token + result["embedding_gb_per_token"]
        result["effective_gb_s"] = streamed * new_tokens / decode
        if reads:
            result["token_efficiency"] = result["effective_gb_s"] / result["read_gb_s"]
    if xp is not np:
        streamed = [isinstance(layer["multi_head_attention"]["query"], StreamedWeight)
                    for layer in m.params["layers"]]
        result["resident_layers"] = len(streamed) - sum(streamed)
        result["streamed_layers"] = sum(streamed)
        # decoding's CUDA graphs (engine/decode.py): a layer that failed to capture runs its
        # launches one by one, and says so here
        result["graph_layers"] = sum(map(replayed, m.decode_plans))
        result["gpu_pool_mb"] = xp.get_default_memory_pool().total_bytes() / 2**20
        if bandwidth:
            result.update(int8_kernel_bandwidth(xp))
    if "int8_gemv_gb_s" in result:
        result["kernel_efficiency"] = result["int8_gemv_gb_s"] / result["read_gb_s"]
    if "layer_decode_s" in result:
        result["layer_gb"] = per_token / cfg.num_layers
        if bandwidth:
            # The floor: reading one layer's active int8 bytes at the raw read bandwidth.
            floor = result["layer_gb"] / result["read_gb_s"]
            result["bandwidth_efficiency"] = floor / result["layer_decode_s"]
    # Four significant digits: a small checkpoint's GB and seconds are fractions of a thousandth.
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}
