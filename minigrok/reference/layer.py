"""One Grok-1 decoder layer: attention and MoE, each wrapped in a *sandwich* of RMSNorms.

    h = h + rms_norm_1(attention(rms_norm(h)))
    h = h + rms_norm_3(moe(rms_norm_2(h)))

The norms after each block (rms_norm_1, rms_norm_3) are Grok-1's own; a port that drops
them still produces plausible text. The four norms are named in the order the official
code creates them, which is the order of their checkpoint files.
"""

from .attention import attention
from .moe import moe
from .rmsnorm import rms_norm


def decoder_layer(h, layer: dict, cfg, *, keep, offset: int = 0, cache=None, index: int = 0,
                  trace: dict | None = None):
    """h: [T, D] -> [T, D] float32.

    layer: this layer's parameters by their official names relative to the layer
    (``multi_head_attention``: query/key/value/linear, ``moe``: linear/linear_v/linear_1,
    ``router``, ``rms_norm`` ... ``rms_norm_3``). keep: [T] bool, tokens that are not padding.
    ``trace``, when given, receives every intermediate in computation order (attn_in, the
    attention's own, attn_out, after_attn, moe_in, router_probs, expert_ids, expert_gates,
    moe_out, layer_out); nothing else changes. ``index``: the layer's place in the model,
    which picks its part of the KV cache.
    """
    x = rms_norm(h, layer["rms_norm"])
    if trace is not None:
        trace["attn_in"] = x
    a = attention(x, **layer["multi_head_attention"], num_q_heads=cfg.num_q_heads,
                  num_kv_heads=cfg.num_kv_heads, key_size=cfg.key_size,
                  multiplier=cfg.attn_output_multiplier, keep=keep, offset=offset,
                  cache=cache, index=index, trace=trace)
    h = h + rms_norm(a, layer["rms_norm_1"])
    x = rms_norm(h, layer["rms_norm_2"])
    m, probs, ids, gates = moe(x, layer["router"], **layer["moe"],
                               num_selected=cfg.num_selected_experts)
    out = h + rms_norm(m, layer["rms_norm_3"])
    if trace is not None:
        trace.update(attn_out=a, after_attn=h, moe_in=x, router_probs=probs, expert_ids=ids,
                     expert_gates=gates, moe_out=m, layer_out=out)
    return out
