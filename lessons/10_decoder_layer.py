# %% [markdown]
# # Lesson 10: the decoder layer
#
# **Goal.** Assemble lessons 05 to 09 into one Grok-1 layer, by hand, and check it against
# minigrok's `decoder_layer` to the last bit.
#
# **The idea.** Two residual blocks, each in a sandwich of RMSNorms:
#
# $$\begin{aligned}
# a &= \mathrm{attention}(\mathrm{rms\_norm}(h)), & h' &= h + \mathrm{rms\_norm\_1}(a),\\
# m &= \mathrm{moe}(\mathrm{rms\_norm\_2}(h')), & h'' &= h' + \mathrm{rms\_norm\_3}(m).
# \end{aligned}$$
#
# The layer's parameters, by their official names: `multi_head_attention/{query, key, value,
# linear}`, `moe/{linear, linear_v, linear_1}`, `router`, and the four norm scales
# `rms_norm`, `rms_norm_1`, `rms_norm_2`, `rms_norm_3` (named in the order the official code
# creates them, which is also the order of their files).
#
# **The code.** `minigrok/reference/layer.py`: `decoder_layer`, the reference layer and nothing
# else (a GPU decoding one token runs the engine's fused `decode_layer` instead,
# `minigrok/engine/decode.py`, and a CPU makes the same steps with the int8 products in
# four batches, `minigrok/engine/cpu_decode.py`, both held to this one by the tests);
# `minigrok/formats/checkpoint.py`:
# `layer_params` (the nested dict of one layer's parameters, built from the flat checkpoint by
# name).

# %%
import _common as C
import numpy as np
from minigrok.formats.checkpoint import layer_params
from minigrok.reference.attention import attention
from minigrok.reference.layer import decoder_layer
from minigrok.reference.model import embed
from minigrok.reference.moe import moe
from minigrok.reference.rmsnorm import rms_norm

args = C.setup(10, "the decoder layer")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
keep = tokens > cfg.pad_token
layer = params["layers"][0]


def show(tree, indent="  "):
    for name, value in tree.items():
        if isinstance(value, dict):
            print(f"{indent}{name}/")
            show(value, indent + "  ")
        elif hasattr(value, "scales"):
            print(f"{indent}{name:<12} int8 {list(value.weight.shape)}, scales {list(value.scales.shape)}")
        else:
            print(f"{indent}{name:<12} {np.asarray(value).dtype} {list(np.shape(value))}")


print("layer 0's parameters (layer_params):")
show(layer)
same = layer_params(model.checkpoint.params, 0)
print("built from the flat checkpoint by name:",
      same["router"] is model.checkpoint.params["transformer/decoder_layer_0/router/w"])

# %% [markdown]
# ## By hand

# %%
h = embed(params, cfg, tokens)
x = rms_norm(h, layer["rms_norm"])
a = attention(x, **layer["multi_head_attention"], num_q_heads=cfg.num_q_heads,
              num_kv_heads=cfg.num_kv_heads, key_size=cfg.key_size,
              multiplier=cfg.attn_output_multiplier, keep=keep)
h1 = h + rms_norm(a, layer["rms_norm_1"])
x2 = rms_norm(h1, layer["rms_norm_2"])
m, probs, ids, gates = moe(x2, layer["router"], **layer["moe"], num_selected=cfg.num_selected_experts)
h2 = h1 + rms_norm(m, layer["rms_norm_3"])
for name, value in (("h (input)", h), ("rms_norm(h)", x), ("a = attention", a),
                    ("h' = h + rms_norm_1(a)", h1), ("rms_norm_2(h')", x2), ("m = moe", m),
                    ("h'' = h' + rms_norm_3(m)", h2)):
    C.peek(name, value)

# %% [markdown]
# ## Checked against `decoder_layer`
# The same operations in the same order give the same bits. Then the size of what the layer
# added: each block's update has about the rms of its post-norm scale (lesson 05), so the
# scales decide how far one layer moves the stream. A random checkpoint's post-norm scales
# are centred at 0.1 (`make-checkpoint`), so there a layer moves a stream of rms about 1 by
# about a seventh of its size; the trained model's scales are learned, and the last line
# says how far this layer moves it, and whether the update adds to the stream or partly
# cancels it (the sign of their cosine).

# %%
def rms(v):
    return float(np.sqrt(np.mean(np.asarray(v, np.float64) ** 2)))


ref = decoder_layer(h, layer, cfg, keep=keep, index=0)
print("max |by hand - decoder_layer| =", float(np.abs(h2 - ref).max()))
print("the routers' inputs used by lessons 08-09 (_common.moe_inputs) match:",
      np.array_equal(C.moe_inputs(params, cfg, tokens)[0], x2))
print(f"what the layer added: attention {rms(h1 - h):.4f} rms (its rms_norm_1 scale: "
      f"{rms(layer['rms_norm_1']):.4f}), MoE {rms(h2 - h1):.4f} rms (rms_norm_3 scale: "
      f"{rms(layer['rms_norm_3']):.4f})")
cosine = float(((h2 - h) * h).sum() / np.linalg.norm(h2 - h) / np.linalg.norm(h))
print(f"layer 0 moves the stream by {rms(h2 - h) / rms(h):.0%} of its size; its rms goes "
      f"{rms(h):.4f} -> {rms(h2):.4f} (orthogonal, it would go to "
      f"{np.hypot(rms(h), rms(h2 - h)):.4f}: the update's cosine with the stream is {cosine:+.2f})")

# %% [markdown]
# ## Try this
# - Drop the post-norms (`h1 = h + a`, `h2 = h1 + m`): a "standard" pre-norm layer with
#   Grok-1's weights. How different is the output?
# - Swap the order of the two blocks (MoE first): does `decoder_layer`'s output change a lot?
# - Exercise `decoder_layer`: assemble the layer from rms_norm, attention and moe with its
#   four norms: `python -m minigrok exercises check decoder_layer`.
#
# ## On the real model

# %%
from minigrok.formats.checkpoint import active_int8_bytes, layer_specs

per_layer = active_int8_bytes(C.GROK1) // C.GROK1.num_layers
stored = sum(int(np.prod(s.shape)) for s in layer_specs(C.GROK1, 0) if s.scales)
print(f"one layer stores {C.fmt_bytes(stored)} of int8 weights and reads {C.fmt_bytes(per_layer)} "
      f"of them per token (attention + 2 experts)")
print(f"per token and layer: ~{C.fmt_count(2 * per_layer)} FLOPs")
C.estimate("one layer for one token at 20 GB/s (assumed)", f"{per_layer / 20e9 * 1e3:.0f} ms")
