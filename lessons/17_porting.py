# %% [markdown]
# # Lesson 17: porting Grok-1, stage by stage, with golden vectors
#
# **Goal.** Check a port of Grok-1 (to Rust, C++, a GPU kernel, another framework) the way
# an engineer should: not by the text it writes, not only by its logits, but by every
# intermediate value of one forward pass, so that the first stage where it departs from
# Grok-1 names the bug.
#
# **The idea.** A port that writes the right next tokens can still be wrong (lesson 13: a
# bug can move the logits by less than the official code's own rounding). minigrok's
# golden files hold the value after every stage of every layer: the embeddings, the
# attention's input, q, k and v after RoPE, the attention probabilities, the context, the
# residual stream after the attention, the router's probabilities, the chosen experts and
# their gates, the MoE's output, the layer's output, the final norm and the logits (14
# stages a layer). A port dumps its own values under the same names; `golden compare`
# sorts the arrays in model order and reports the first that is out of tolerance. The
# tolerance of each array is relative to its largest value: float32 ports must agree to
# 1e-4 (measured: within 1.5e-6), bfloat16 ports, like the official code, to 2e-2; the
# chosen experts must be equal, except at near-ties where the other expert's probability
# is within the tie tolerance.
#
# **The code.** `minigrok/golden.py` (`golden_arrays`, `write`, `read`, `compare`,
# `first_failure`, `table`; the stages are `LAYER_STAGES`), `docs/golden-format.md` (names,
# shapes, tolerances and why, readers in other languages), and the command line:
# `python -m minigrok golden --tokens ... --out golden.npz`, `golden verify`,
# `golden compare golden.npz yours.npz [--profile bfloat16]`.

# %%
import os
import tempfile

import _common as C
import numpy as np
from minigrok import golden
from minigrok.reference import attention as attention_module
from minigrok.reference import moe as moe_module
from minigrok.reference import quant

args = C.setup(17, "porting Grok-1, stage by stage, with golden vectors")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)

# %% [markdown]
# ## The golden file
# `golden_arrays` runs minigrok's forward over the whole sequence (no KV cache) and keeps
# every stage; `write` stores them as an ordinary `.npz` (a zip of `.npy` files, any
# language can read it) with a `meta` entry: the config, the checkpoint's fingerprint and
# the tolerances. The same inputs give the same bytes.

# %%
expected = golden.golden_arrays(params, cfg, tokens)
names = [n for n in expected if n != "meta"]
LAYER_0 = golden.layer_name(0, "")                       # the prefix of layer 0's stages
print(f"{len(names)} arrays for {len(tokens)} tokens and {cfg.num_layers} layers; layer 0's:")
for name in names[:2] + [n for n in names if n.startswith(LAYER_0)]:
    print(f"  {name:<24} {str(list(expected[name].shape)):<16} {expected[name].dtype}")
with tempfile.TemporaryDirectory() as tmp:
    path = golden.write(os.path.join(tmp, "golden.npz"), expected)
    size = path.stat().st_size
    again = golden.read(path)
print(f"golden.npz: {C.fmt_bytes(size)}; read back equal: "
      f"{all(np.array_equal(again[n], expected[n]) for n in names)}")
print("closest routing decision:", again["meta"]["closest_routing"])

# %% [markdown]
# ## Three ports, each with a bug real ports have had
# A port is simulated by running minigrok's own forward with one function swapped (as
# lesson 13 plants its mutants), then dumping its stages under the golden names:
#
# - **interleaved RoPE**: pairs features $(2i, 2i+1)$ instead of $(i, i + d/2)$;
# - **renormalised gates**: divides the two gates by their sum (Mixtral's routing code);
# - **bfloat16 activations**: every stage rounded to bfloat16, as the official code keeps
#   its activations. Not a bug: the `bfloat16` tolerance profile is for such a port.

# %%
def in_bfloat16(arrays):
    """Every float array rounded to bfloat16 (round to nearest even) and back."""
    return {n: quant.bf16_to_f32(quant.f32_to_bf16(a)) if a.dtype == np.float32 else a
            for n, a in arrays.items() if n != "meta"}


ports = {}
# the bugs of lesson 13, planted the same way (C.patched: lessons/_common.py)
with C.patched(attention_module, "apply_rope", C.interleaved_rope):
    ports["interleaved RoPE"] = golden.trace_arrays(params, cfg, tokens)
with C.patched(moe_module, "route", C.renormalised_route):
    ports["renormalised gates"] = golden.trace_arrays(params, cfg, tokens)
ports["bfloat16 activations"] = in_bfloat16(expected)

reports = {}
for port, actual in ports.items():
    for profile in ("float32", "bfloat16"):
        rows = golden.compare(expected, actual, profile)
        reports[port, profile] = rows
        first = golden.first_failure(rows)
        print(f"{port:<21} {profile:<9} " +
              ("all stages within tolerance" if first is None else
               f"first failure: {golden.describe(first)}"))

# %% [markdown]
# The first failure names the bug: the interleaved RoPE first shows in `layer_00/q` (the
# attention's input `attn_in` is still right), the renormalised gates in
# `layer_00/expert_gates` (the router's probabilities and the chosen experts are still
# right). The bfloat16 port fails the float32 profile at its very first array and passes
# the bfloat16 one everywhere. Layer 0 of the renormalising port, in full:

# %%
print(golden.table([r for r in reports["renormalised gates", "float32"]
                    if r["name"].startswith(LAYER_0) or r["name"] in ("final_norm", "logits")]))

# %% [markdown]
# Look at the last rows: the gates are wrong by a factor $1/(g_1 + g_2)$, the MoE's output
# by as much, and yet the layer's output (after `rms_norm_3`, which divides out any
# per-token factor but for its eps) and the logits are within the float32 tolerance: a few
# millionths of their largest values. A test of the logits alone passes this port; the
# stage table cannot (lesson 13 measures the same effect on the whole model).

# %%
stages = [s for s in golden.LAYER_STAGES if s not in golden.ID_STAGES]
fig, ax = C.plt.subplots(figsize=(8.5, 3.4))
for (port, marker) in (("interleaved RoPE", "o-"), ("renormalised gates", "s-"),
                       ("bfloat16 activations", "^-")):
    rows = {r["name"]: r for r in reports[port, "float32"]}
    # to one significant digit: an error at float32's rounding level (the renormalising
    # port's layer_out) differs in its second digit from one CPU to another, and the figure
    # should be the same bytes everywhere
    rel = [float(f"{rows[golden.layer_name(0, s)]['rel']:.1g}") for s in stages]
    ax.semilogy(range(len(stages)), np.maximum(rel, 1e-9), marker, ms=4, label=port)
for profile, style in (("float32", "--"), ("bfloat16", ":")):
    ax.axhline(golden.TOLERANCES[profile]["default"], color="gray", ls=style, lw=1,
               label=f"{profile} tolerance")
ax.set_xticks(range(len(stages)), stages, rotation=45, ha="right", fontsize=7)
ax.set_ylabel("relative error (1 digit; floor 1e-9)")
ax.set_title("layer 0 of three ports against the golden file, stage by stage")
ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.52, 0.1))
fig.tight_layout()
C.save_figure(fig, "port_errors")

# %% [markdown]
# ## Try this
# - Make the file from the command line and compare a port's dump with it:
#   `python -m minigrok golden --tokens 5,17,300 --out golden.npz`, then
#   `python -m minigrok golden compare golden.npz yours.npz` (exit 0 when every stage is in
#   tolerance; `--profile bfloat16` for a bfloat16 port). `docs/golden-format.md` has readers
#   for other languages.
# - Plant the "erf GELU" mutant of lesson 13 (`C.patched(moe_module, "gelu", ...)`): which
#   stage fails first?
# - Reorder the layers as numbers (lesson 02's trap) with `dict(params, layers=...)`: which
#   layer's stages fail first, and why does layer 0 still pass?
# - Round only the attention's probabilities to bfloat16: how far does that error travel?
#
# ## On the real model
# A golden file of the real Grok-1 holds, per layer, the [H, T, T] attention probabilities
# and a dozen [T, 6144]-sized arrays, and the [T, 131072] logits. Estimates, from the config:

# %%
G = C.GROK1
for T in (8, 128, 1024):
    per_layer = 4 * (T * G.emb_size * 6 + T * (G.num_q_heads + 2 * G.num_kv_heads) * G.key_size
                     + G.num_q_heads * T * T + T * G.num_q_heads * G.key_size
                     + T * (G.num_experts + 2 * G.num_selected_experts))
    whole = 4 * (T * G.emb_size * 2 + T * G.vocab_size) + G.num_layers * per_layer
    C.estimate(f"{T} tokens, all 64 layers", C.fmt_bytes(whole))
# `--layers A-B` keeps a few layers (e.g. `--layers 0-1,63`): enough to find where a port
# departs, at a fraction of the size and of the hour the real model's forward takes.
