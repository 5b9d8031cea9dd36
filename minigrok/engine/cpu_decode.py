"""The CPU's decoding step: one token through a decoder layer, its int8 products made together.

A decode step on the CPU is ten int8 products (query, key, value, the output projection, then
up, gate and down of two experts), and the reference makes them one after another: each
starts the second thread anew and ends waiting for it, and Grok-1's 6144 x 1024 key and value,
one piece of work each, leave the second thread idle. Yet most of them need only what came
before them in the layer: the query, key and value need the same x, the two experts' up and
gate products the same x after the router, their down products only their own GELU. So
cpu_decode_layer makes reference.layer.decoder_layer's steps with the products in four
parallel_maps instead of ten (weights.matmuls): q|k|v, the output projection, the four up and
gate products, the two down products. Everything else is the reference's own code (the norms,
``projected_attention``, ``route``, ``gelu``) in the reference's order, so the output is
decoder_layer's bit for bit (tests/test_engine.py). Measured on this 2-core VM (Grok-1's full
width): a layer's step 27.0 -> 28.0 GB/s of int8 in alternating rounds, and bench's one more
layer 46-52 -> 40-44 ms, 0.92 of the raw read (docs/performance.md).
"""

import numpy as np

from ..reference.attention import projected_attention
from ..reference.layer import decoder_layer
from ..reference.moe import expert_weight, gelu, route
from ..reference.rmsnorm import rms_norm
from .weights import matmuls


def cpu_decode_layer(h, layer: dict, cfg, *, keep, offset: int = 0, cache=None, index: int = 0,
                     trace: dict | None = None):
    """reference.layer.decoder_layer, with the same arguments and the same result; one token
    with a cache (and no trace) takes the fused path above, anything else the reference.

    h: [T, D] float32 on the host; layer: its parameters with the engine's weights
    (weights.Int8Weight). Returns [T, D] float32.
    """
    if trace is not None or cache is None or h.shape[0] != 1:
        return decoder_layer(h, layer, cfg, keep=keep, offset=offset, cache=cache, index=index,
                             trace=trace)
    att, experts = layer["multi_head_attention"], layer["moe"]
    x = rms_norm(h, layer["rms_norm"])                                           # [1, D]
    q, k, v = matmuls([(x, att[name]) for name in ("query", "key", "value")])
    a = projected_attention(q, k, v, att["linear"], num_q_heads=cfg.num_q_heads,
                            num_kv_heads=cfg.num_kv_heads, key_size=cfg.key_size,
                            multiplier=cfg.attn_output_multiplier, keep=keep, offset=offset,
                            cache=cache, index=index)                            # [1, D]
    h = h + rms_norm(a, layer["rms_norm_1"])
    x = rms_norm(h, layer["rms_norm_2"])
    # moe.moe for one token: its experts in ascending order, each gate times its output
    # added to zeros in that order
    _, ids, gates = route(x, layer["router"], cfg.num_selected_experts)          # [1, k]
    slots = np.argsort(ids[0])
    chosen = [int(ids[0, s]) for s in slots]
    up = matmuls([(x, expert_weight(experts[name], e)) for e in chosen
                  for name in ("linear", "linear_v")])                           # 2k x [1, F]
    acts = [gelu(up[2 * i]) * up[2 * i + 1] for i in range(len(chosen))]
    down = matmuls([(act, expert_weight(experts["linear_1"], e))
                    for act, e in zip(acts, chosen)])                            # k x [1, D]
    m = np.zeros(x.shape, dtype=np.float32)
    for s, y in zip(slots, down):
        m[[0]] += gates[[0], [s]][:, None] * y
    return h + rms_norm(m, layer["rms_norm_3"])
