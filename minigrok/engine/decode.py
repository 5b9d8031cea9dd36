"""The GPU's decoding step: one token through a whole decoder layer, replayed as a CUDA graph.

A decode step's arithmetic is tiny next to its weights, but the reference spends ~150 small CuPy
operations per layer, each ~5-240 us of host time: on an H200 a full-width layer took 4-7 ms
against 0.31 ms to read its 1.3 GB of weights. decode_layer does reference.layer.decoder_layer's
steps for one token with the kernels of kernels/decode.cu and the int8 GEMV (gemv.py): the
teaching formulas in the teaching order, compiled without fused multiply-adds so that each
product and sum is rounded as CuPy's separate operations round it. Both experts go through each
of their steps in one launch (their up and gate products, gelu_mul, their down products, the
gated sum), and so do the query, key and value products: 15 launches a layer.

Queued one by one, those launches cost the host about as long as the GPU takes to run them (an
H200: 0.58 ms of queueing for a 0.51 ms layer, 21 cupy.empty calls among them). So a layer's
launches are made ahead, once (docs/performance.md, "The GPU's decode step"):

  * decode_scratch: every buffer a step writes, made once per GPU at load; the layers on a
    GPU share them, as their steps run one after another on one stream;
  * decode_plan / the first step with a KV cache: the launches bound to the layer's weights,
    the scratch and that cache, with the launch geometry and every check done then;
  * the token's position and pad flag are read from device memory, written by one small
    launch (begin_step) before the layer's: the layer's launches are the same every step,
    and from the second step on they are captured as one CUDA graph and replayed: two
    launches a layer for the host, nothing allocated or checked.

The router's choice stays on the GPU (routed_call reads the experts' indices there), so the host
never waits. A streamed layer's weights come from the host (stream.py), and the host must learn
which experts to copy: its launches run one by one, with those copies between them.
tests/test_cupy.py holds decode_layer to decoder_layer over many steps, graphs included.
"""

import functools
import warnings

import numpy as np

from ..reference.attention import MASKED, SOFT_CAP, layer_cache
from ..reference.rmsnorm import EPS
from ..reference.rope import BASE
from ..reference.xp import array_module
from .gemv import (gemv_call, gemv_fits, gemv_partial_floats, routed_call, routed_partial_floats,
                   three_call, three_partial_floats)
from .kernels import source

# Cache rows per attention_part block. Short enough that a long cache gives every
# multiprocessor several blocks (8192 rows, 8 kv heads: 1024 blocks on an H200's 132), long
# enough that a short one is one block per kv head.
# Measured on an H200 (tests/gpu_profile.py, two runs), Grok-1's heads at 1024 / 4096 / 8192
# cached rows: 0.070 / 0.108-0.116 / 0.143-0.167 ms with 64 rows, 0.106 / 0.124-0.136 /
# 0.154-0.175 with 128; 32 rows won at 1024 (0.058) but lost at 8192 (0.22-0.25).
ATTENTION_CHUNK = 64
SHARED_FLOATS = 12288        # the 48 KB of shared memory a block gets without asking
ROUTER_THREADS = 256         # router_logits' block (decode.cu's ROUTER_THREADS)
TILE_COUNTERS = 4096         # the GEMV's tile counters in a scratch (Grok-1's widest: 256)

_decode_kernels = {}


def _decode_kernel(name: str):
    import cupy

    if name not in _decode_kernels:        # a RawKernel is built for each GPU it runs on
        _decode_kernels[name] = cupy.RawKernel(source("decode.cu"), name,
                                               options=("--fmad=false",))
    return _decode_kernels[name]


def _launch(name: str, grid, block, *args, shared_mem: int = 0):
    """A decode.cu launch as a call to make later: ints become int32, floats float32."""
    import cupy

    args = tuple(cupy.int32(a) if isinstance(a, (bool, int)) else
                 cupy.float32(a) if isinstance(a, float) else a for a in args)
    return functools.partial(_decode_kernel(name), grid, block, args, shared_mem=shared_mem)


def decode_fits(h, cache, offset: int, cfg) -> bool:
    """Whether decode_layer takes this step: one token on a GPU, with a cache, and no more
    query heads per kv head than attention_part's shared memory holds scores for."""
    return array_module(h) is not np and h.shape[0] == 1 and cache is not None and \
        cfg.num_q_heads // cfg.num_kv_heads <= SHARED_FLOATS and cfg.num_experts <= 64


def _chunk(cfg, chunk: int = ATTENTION_CHUNK) -> int:
    return min(chunk, SHARED_FLOATS // (cfg.num_q_heads // cfg.num_kv_heads))


def _attention_buffers(cfg, rows: int, chunk: int) -> dict:
    """attend's buffers for caches of up to ``rows`` rows: part [P_max, H, d], part_max,
    part_sum [P_max, H], context [1, H*d] float32."""
    import cupy

    H, d, P_max = cfg.num_q_heads, cfg.key_size, -(-rows // chunk)
    return {"part": cupy.zeros((P_max, H, d), cupy.float32),
            "part_max": cupy.zeros((P_max, H), cupy.float32),
            "part_sum": cupy.zeros((P_max, H), cupy.float32),
            "context": cupy.zeros((1, H * d), cupy.float32)}


def _attention_steps(q_rot, cache_k, cache_v, cache_keep, pos, buffers: dict, cfg, chunk: int):
    """attention.context for one token as two launches: attention_part over blocks of
    ``chunk`` cache rows (room for all of cache_k's rows), then attention_combine.

    q_rot: [1, H*d] float32, rotated; cache_k, cache_v: [S_max, K, d]; cache_keep: [S_max]
    bool; pos: int32 [1] on the GPU, the token's position (it attends to rows 0..pos);
    buffers: _attention_buffers' for at least S_max rows. The context goes to
    buffers["context"] [1, H*d].
    """
    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    G, P_max = H // K, -(-cache_k.shape[0] // chunk)
    b = buffers
    if b["part"].shape[0] < P_max:
        raise ValueError(f"attention buffers for {b['part'].shape[0]} blocks, {P_max} needed")
    return [_launch("attention_part", (K * P_max,), (128,), q_rot, cache_k, cache_v, cache_keep,
                    b["part"], b["part_max"], b["part_sum"], pos, K, G, d, chunk,
                    float(cfg.attn_output_multiplier), float(SOFT_CAP), float(MASKED),
                    shared_mem=G * chunk * 4),
            _launch("attention_combine", (H,), (128,), b["part"], b["part_max"], b["part_sum"],
                    b["context"], pos, chunk, H, d)]


def attend(q_rot, cache_k, cache_v, cache_keep, S: int, cfg, chunk: int = ATTENTION_CHUNK):
    """attention.context for one token on a GPU, made now: q_rot [1, H*d] float32, rotated;
    cache_k, cache_v: [>= S, K, d]; cache_keep: [>= S] bool; S: the rows to attend to ->
    [1, H*d] float32."""
    import cupy

    chunk = _chunk(cfg, chunk)
    buffers = _attention_buffers(cfg, cache_k.shape[0], chunk)
    pos = cupy.asarray([S - 1], dtype=cupy.int32)
    for step in _attention_steps(q_rot, cache_k, cache_v, cache_keep, pos, buffers, cfg, chunk):
        step()
    return buffers["context"]


def decode_scratch(layer: dict, cfg, rows: int) -> dict:
    """The buffers a decode step writes, on the current GPU, for layers shaped like ``layer``
    and KV caches of up to ``rows`` rows: the layers of one GPU share them.

    Each is float32 unless said: inp, h1, x, a, m, out [1, D] (the step's input, the
    residual after attention, a norm's output, the attention's output, the MoE's, the
    layer's); q, q_rot [1, H*d], k, v [1, K*d]; the attention's (_attention_buffers);
    logits, probs [E]; ids [k] int32, gates [k]; xwv [2k, F], act [k, F], y [k, D]; pos
    int32 [1], keep bool [1]; the GEMV's partial rows (flat) and tile counters (uint32 zeros).
    """
    import cupy

    D, H, K, d = cfg.emb_size, cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    E, k = cfg.num_experts, cfg.num_selected_experts
    att, experts = layer["multi_head_attention"], layer["moe"]
    F = experts["linear"].weight.shape[-1]
    partial = max(three_partial_floats([att[n] for n in ("query", "key", "value")]),
                  gemv_partial_floats(att["linear"]),
                  routed_partial_floats((experts["linear"], experts["linear_v"]), k),
                  routed_partial_floats((experts["linear_1"],), k))

    def f32(*shape):
        return cupy.zeros(shape, dtype=cupy.float32)

    return {**{n: f32(1, D) for n in ("inp", "h1", "x", "a", "m", "out")},
            "q": f32(1, H * d), "q_rot": f32(1, H * d), "k": f32(1, K * d), "v": f32(1, K * d),
            **_attention_buffers(cfg, rows, _chunk(cfg)),
            "logits": f32(E), "probs": f32(E), "ids": cupy.zeros(k, dtype=cupy.int32),
            "gates": f32(k), "xwv": f32(2 * k, F), "act": f32(k, F), "y": f32(k, D),
            "pos": cupy.zeros(1, dtype=cupy.int32), "keep": cupy.zeros(1, dtype=bool),
            "partial": f32(partial), "counters": cupy.zeros(TILE_COUNTERS, dtype=cupy.uint32)}


BINDINGS = 4      # KV caches a plan keeps its launches (and graph) for: bench alternates two


def decode_plan(scratch: dict, graphs: bool = True) -> dict:
    """A layer's decode steps, made ahead: its launches, bound to a KV cache at the first
    step with it, and, with ``graphs``, their CUDA graph from the second step on.
    scratch: decode_scratch's, on the layer's GPU. "bindings": for each of the last
    BINDINGS caches (by their addresses and shape), its steps, whether all are launches
    ("resident"), its graph and how many steps it has run."""
    return {"scratch": scratch, "graphs": graphs, "bindings": {}}


def replayed(plan: dict) -> bool:
    """Whether the plan replays a CUDA graph for one of its caches."""
    return any(bound["graph"] is not None for bound in plan["bindings"].values())


def _steps(layer: dict, cfg, s: dict, cache_k, cache_v, cache_keep):
    """decoder_layer for one token as a list of calls (launches, or for a streamed layer's
    products the host's copies and CuPy's products), reading s["inp"], s["pos"], s["keep"]
    and leaving the layer's output in s["out"]. -> (steps, whether all are launches)."""
    import cupy

    D, H, K, d = cfg.emb_size, cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    E, k, F = cfg.num_experts, cfg.num_selected_experts, s["act"].shape[1]
    att, experts = layer["multi_head_attention"], layer["moe"]
    qkv = [att[n] for n in ("query", "key", "value")]
    up, down = (experts["linear"], experts["linear_v"]), (experts["linear_1"],)
    resident = all(gemv_fits(w.weight) for w in qkv + [att["linear"], *up, *down])
    norm, norm_1, norm_2, norm_3, router = (
        cupy.asarray(layer[n], dtype=cupy.float32)
        for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3", "router"))

    def rms_norm(x, scale, out, residual=None):       # out = norm(x) [+ residual]
        return _launch("rms_norm", (1,), (1024,), x, scale, x if residual is None else residual,
                       residual is not None, out, D, EPS)

    if resident:
        products = three_call(s["x"], qkv, (s["q"], s["k"], s["v"]), s["partial"], s["counters"])
        linear = gemv_call(s["context"], att["linear"], s["a"], s["partial"], s["counters"])
        experts_up = routed_call(s["x"], up, s["ids"], s["xwv"], s["partial"], s["counters"])
        experts_down = routed_call(s["act"], down, s["ids"], s["y"], s["partial"], s["counters"])
    else:
        chosen = []                         # the routed experts' streamed weights, this step

        def products():
            for w, y in zip(qkv, (s["q"], s["k"], s["v"])):
                y[...] = w.matmul(s["x"])

        def linear():
            s["a"][...] = att["linear"].matmul(s["context"])

        def experts_up():                   # the host must learn which experts to copy: a wait
            # each expert's view starts its copy as it is made, all of them before the first use
            chosen[:] = [[w[e] for w in up + down] for e in s["ids"].get().tolist()]
            s["xwv"][...] = cupy.concatenate([w.matmul(s["x"]) for W, V, _ in chosen
                                              for w in (W, V)])

        def experts_down():
            s["y"][...] = cupy.concatenate([weights[2].matmul(s["act"][i:i + 1])
                                            for i, weights in enumerate(chosen)])

    chunk = _chunk(cfg)
    steps = [rms_norm(s["inp"], norm, s["x"]),
             products,                                                  # q, k, v
             _launch("rope_and_cache", (-(-max((H + K) * d // 2, K * d) // 256),), (256,),
                     s["q"], s["k"], s["v"], s["keep"], s["q_rot"], cache_k, cache_v,
                     cache_keep, s["pos"], H, K, d, float(BASE)),
             *_attention_steps(s["q_rot"], cache_k, cache_v, cache_keep, s["pos"], s, cfg,
                               chunk),                                  # -> context
             linear,                                                    # -> a
             rms_norm(s["a"], norm_1, s["h1"], residual=s["inp"]),      # h1 = inp + norm(a)
             rms_norm(s["h1"], norm_2, s["x"]),
             _launch("router_logits", (E,), (ROUTER_THREADS,), s["x"], router, s["logits"],
                     D, E),
             _launch("route_top_k", (1,), (1,), s["logits"], s["probs"], s["ids"], s["gates"],
                     E, k),
             experts_up,                                                # -> xwv [2k, F]
             _launch("gelu_mul", (-(-k * F // 256),), (256,), s["xwv"], s["act"], F, k * F),
             experts_down,                                              # -> y [k, D]
             _launch("add_experts", (-(-D // 256),), (256,), s["gates"], s["y"], s["m"], k, D),
             rms_norm(s["m"], norm_3, s["out"], residual=s["h1"])]
    return steps, resident


def _capture(steps):
    """The steps' launches as one CUDA graph (captured on a stream of its own, not run)."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            for step in steps:
                step()
        finally:
            graph = stream.end_capture()
    return graph


def decode_layer(h, layer, cfg, *, keep, offset: int, cache, index: int, plan=None):
    """reference.layer.decoder_layer for one token on a GPU, in few launches (see above).

    h: [1, D] float32 on the layer's GPU; layer: its parameters, with the engine's weights
    (weights.Int8Weight where resident, StreamedWeight where streamed); keep: [1] bool;
    cache: attention.new_cache, the token goes to row ``offset`` of layer ``index``'s cache.
    plan: decode_plan's for this layer, made at load; without one (or for a cache longer
    than its scratch holds) one is made for this call, and nothing is kept.
    Returns [1, D] float32: the scratch's ``out``, which the next decode step on this GPU
    overwrites (forward hands it straight to the next layer).
    """
    import cupy

    cache_k, cache_v, cache_keep = layer_cache(cache, index, cupy)
    if plan is None or plan["scratch"]["part"].shape[0] < -(-cache_k.shape[0] // _chunk(cfg)):
        plan = decode_plan(decode_scratch(layer, cfg, cache_k.shape[0]), graphs=False)
    s = plan["scratch"]
    # A graph holds the cache's addresses: a cache at other ones (the next generation's) is
    # bound anew. (One at the same addresses and shape is bound already.)
    key = tuple(a.data.ptr for a in (cache_k, cache_v, cache_keep)) + cache_k.shape
    bound = plan["bindings"].get(key)
    if bound is None:
        if len(plan["bindings"]) == BINDINGS:
            del plan["bindings"][next(iter(plan["bindings"]))]           # the oldest
        steps, resident = _steps(layer, cfg, s, cache_k, cache_v, cache_keep)
        bound = plan["bindings"][key] = {"steps": steps, "resident": resident, "graph": None,
                                         "runs": 0}
    D = cfg.emb_size
    _decode_kernel("begin_step")((-(-D // 256),), (256,), (
        h, keep, cupy.int32(offset), s["inp"], s["keep"], s["pos"], cupy.int32(D)))
    if bound["graph"] is None and plan["graphs"] and bound["resident"] and bound["runs"] > 0:
        # from the second step on: the first has run every launch once (each kernel loaded)
        try:
            bound["graph"] = _capture(bound["steps"])
        except Exception as e:       # a CuPy or driver that cannot capture them: one by one
            plan["graphs"] = False
            warnings.warn(f"decoding without CUDA graphs: the capture failed ({e})")
    if bound["graph"] is not None:
        bound["graph"].launch(cupy.cuda.get_current_stream())
    else:
        for step in bound["steps"]:
            step()
    bound["runs"] += 1
    return s["out"]
