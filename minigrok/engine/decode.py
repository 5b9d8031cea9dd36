"""The GPU's decoding step: one token through a whole decoder layer in 14 launches.

A decode step's arithmetic is tiny next to its weights, but the reference spends ~150 small CuPy
operations per layer, each ~5-240 us of host time: on an H200 a full-width layer took 4-7 ms
against 0.31 ms to read its 1.3 GB of weights (attention alone 1.4-2.5 ms, the MoE 1.7-2.1 ms).
decode_layer does reference.layer.decoder_layer's steps for one token with the kernels of
kernels/decode.cu and the int8 GEMV (gemv.py): the teaching formulas in the teaching order,
compiled without fused multiply-adds so that each product and sum is rounded as CuPy's separate
operations round it. The router's choice stays on the GPU (int8_gemv_routed reads it there), so
for resident layers the host never waits and queues the next layer while the GPU still reads
this one's experts. Both experts go through each of their steps in one launch: their up and gate
products (4 matrices), gelu_mul, their down products, the gated sum; the query, key and value
products share one launch too. At one launch per matrix a step took 22 launches, and on an H200
the host needed about as long to queue them (0.77 ms) as the GPU to run them: one more layer
took 0.69 ms. With 14 it takes 0.51 ms, of which the host's queueing is still ~0.57 ms when a
layer runs alone (docs/performance.md). tests/test_cupy.py holds decode_layer to decoder_layer.
"""

import numpy as np

from ..reference.attention import MASKED, SOFT_CAP, layer_cache
from ..reference.rmsnorm import EPS
from ..reference.rope import BASE
from ..reference.xp import array_module
from .gemv import gemv_fits, int8_gemv_routed, int8_gemv_three
from .kernels import source

# Cache rows per attention_part block. Short enough that a long cache gives every
# multiprocessor several blocks (8192 rows, 8 kv heads: 1024 blocks on an H200's 132), long
# enough that a short one is one block per kv head and needs no attention_combine.
# Measured on an H200 (tests/gpu_profile.py, two runs), Grok-1's heads at 1024 / 4096 / 8192
# cached rows: 0.070 / 0.108-0.116 / 0.143-0.167 ms with 64 rows, 0.106 / 0.124-0.136 /
# 0.154-0.175 with 128; 32 rows won at 1024 (0.058) but lost at 8192 (0.22-0.25).
ATTENTION_CHUNK = 64
SHARED_FLOATS = 12288        # the 48 KB of shared memory a block gets without asking

_decode_kernels = {}


def _decode_kernel(name: str):
    import cupy

    if name not in _decode_kernels:        # a RawKernel is built for each GPU it runs on
        _decode_kernels[name] = cupy.RawKernel(source("decode.cu"), name,
                                               options=("--fmad=false",))
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
    """reference rms_norm(x, scale) [+ residual] in one launch: x [1, D] -> [1, D] float32."""
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


def attend(q_rot, cache_k, cache_v, cache_keep, S: int, cfg, chunk: int = ATTENTION_CHUNK):
    """attention.context for one token on a GPU: attention_part over blocks of ``chunk``
    cache rows, then attention_combine where there are several blocks.

    q_rot: [1, H*d] float32, rotated; cache_k, cache_v: [>= S, K, d]; cache_keep: [>= S]
    bool; S: the rows to attend to -> [1, H*d] float32.
    """
    import cupy

    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    G = H // K
    chunk = min(chunk, SHARED_FLOATS // G)
    P = -(-S // chunk)                                 # blocks per kv head
    out = cupy.empty((1, H * d), dtype=cupy.float32)
    part = out if P == 1 else cupy.empty((P, H, d), dtype=cupy.float32)
    part_max, part_sum = (cupy.empty((P, H), dtype=cupy.float32) for _ in range(2))
    _decode_kernel("attention_part")((K * P,), (128,), (
        q_rot, cache_k, cache_v, cache_keep, part, part_max, part_sum, cupy.int32(S),
        cupy.int32(K), cupy.int32(G), cupy.int32(d), cupy.int32(chunk),
        cupy.float32(cfg.attn_output_multiplier), cupy.float32(SOFT_CAP),
        cupy.float32(MASKED)), shared_mem=G * chunk * 4)
    if P > 1:
        _decode_kernel("attention_combine")((H,), (128,), (
            part, part_max, part_sum, out, cupy.int32(P), cupy.int32(H), cupy.int32(d)))
    return out


def decode_layer(h, layer: dict, cfg, *, keep, offset: int, cache, index: int):
    """reference.layer.decoder_layer for one token on a GPU, in few launches (see above).

    h: [1, D] float32 on the layer's GPU; layer: its parameters, with the engine's weights
    (weights.Int8Weight where resident, StreamedWeight where streamed); keep: [1] bool;
    cache: attention.new_cache, the token goes to row ``offset`` of layer ``index``'s cache.
    Returns [1, D] float32.
    """
    import cupy

    att, experts = layer["multi_head_attention"], layer["moe"]
    x = _rms_norm(h, layer["rms_norm"])
    qkv = [att[name] for name in ("query", "key", "value")]
    if all(gemv_fits(w.weight) for w in qkv):
        q, k, v = int8_gemv_three(x, qkv)                             # [1, H*d], [1, K*d] x 2
    else:
        q, k, v = (w.matmul(x) for w in qkv)
    cache_k, cache_v, cache_keep = layer_cache(cache, index, cupy)
    q_rot = _rope_and_cache(q, k, v, keep, cache_k, cache_v, cache_keep, offset, cfg)
    context = attend(q_rot, cache_k, cache_v, cache_keep, offset + 1, cfg)        # [1, H*d]
    h = _rms_norm(att["linear"].matmul(context), layer["rms_norm_1"], residual=h)
    x = _rms_norm(h, layer["rms_norm_2"])

    logits = x @ cupy.asarray(layer["router"], dtype=cupy.float32)               # [1, E]
    top = cfg.num_selected_experts
    ids, gates = _route(logits, top)
    up, down = (experts["linear"], experts["linear_v"]), (experts["linear_1"],)
    if all(gemv_fits(w.weight) for w in up + down):
        weights = None                   # resident: the GEMV reads the experts' indices itself
        xwv = int8_gemv_routed(x, up, ids)                                       # [2k, F]
    else:                                # streamed: the host must learn which to copy (a wait);
        # each expert's view starts its copy as it is made, all of them before the first use
        weights = [[w[e] for w in up + down] for e in ids.get().tolist()]
        xwv = cupy.concatenate([w.matmul(x) for W, V, _ in weights for w in (W, V)])
    act = cupy.empty((top, xwv.shape[1]), dtype=cupy.float32)
    _elementwise("gelu_mul", act.size, xwv, act, cupy.int32(act.shape[1]))       # [k, F]
    if weights is None:
        y = int8_gemv_routed(act, down, ids)                                     # [k, D]
    else:
        y = cupy.concatenate([chosen[2].matmul(act[i:i + 1]) for i, chosen in enumerate(weights)])
    m = cupy.empty_like(h)
    _elementwise("add_experts", m.size, gates, y, m, cupy.int32(top))            # [1, D]
    return _rms_norm(m, layer["rms_norm_3"], residual=h)
