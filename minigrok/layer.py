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


def decoder_layer(h, layer: dict, cfg, *, keep, offset: int = 0, cache=None, index: int = 0):
    """h: [T, D] -> [T, D] float32.

    layer: this layer's parameters by their official names relative to the layer
    (``multi_head_attention``: query/key/value/linear, ``moe``: linear/linear_v/linear_1,
    ``router``, ``rms_norm`` ... ``rms_norm_3``). keep: [T] bool, tokens that are not padding.
    """
    x = rms_norm(h, layer["rms_norm"])
    a = attention(x, **layer["multi_head_attention"], num_q_heads=cfg.num_q_heads,
                  num_kv_heads=cfg.num_kv_heads, key_size=cfg.key_size,
                  multiplier=cfg.attn_output_multiplier, keep=keep, offset=offset,
                  cache=cache, layer=index)
    h = h + rms_norm(a, layer["rms_norm_1"])
    m, _, _, _ = moe(rms_norm(h, layer["rms_norm_2"]), layer["router"], **layer["moe"],
                     num_selected=cfg.num_selected_experts)
    return h + rms_norm(m, layer["rms_norm_3"])
