# %% [markdown]
# # Lesson 09: the experts and top-2 mixing
#
# **Goal.** Run the feed-forward half of a layer: each token goes through the two experts
# its router chose, and their answers are mixed by the gates.
#
# **The idea.** An expert is a gated feed-forward network with three int8 matrices,
# `linear` $W$ [D, F], `linear_v` $V$ [D, F] and `linear_1` $W_1$ [F, D]
# (F = 32768 in Grok-1, 5.3 times D):
#
# $$\mathrm{expert}(x) = \big(\mathrm{gelu}(x W) \odot (x V)\big)\, W_1,
#   \qquad \mathrm{gelu}(z) = \tfrac12 z\big(1 + \tanh(\sqrt{2/\pi}\,(z + 0.044715 z^3))\big).$$
#
# That GELU is the *tanh approximation* (`jax.nn.gelu`'s default), not the exact
# $\tfrac12 z (1 + \mathrm{erf}(z/\sqrt2))$ many libraries call "gelu". The layer's output for
# token $t$ with chosen experts $e_1, e_2$ and gates $g_1, g_2$ (lesson 08):
#
# $$\mathrm{moe}(x_t) = g_1\, \mathrm{expert}_{e_1}(x_t) + g_2\, \mathrm{expert}_{e_2}(x_t).$$
#
# The official code computes all 8 experts for every token and multiplies the 6 unchosen
# ones by 0; minigrok runs only the chosen ones. Same sum, a quarter of the weights read.
#
# **The code.** `minigrok/reference/moe.py`: `gelu`, `expert`, `moe` (and `route`, lesson 08).

# %%
import math

import _common as C
import numpy as np
from minigrok.reference import quant
from minigrok.reference.moe import expert, gelu, moe, route

args = C.setup(9, "the experts and top-2 mixing")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
E, k, F = cfg.num_experts, cfg.num_selected_experts, cfg.ffn_size
layer = params["layers"][0]
w = layer["moe"]
print(f"moe/linear {list(w['linear'].weight.shape)}, moe/linear_v {list(w['linear_v'].weight.shape)}, "
      f"moe/linear_1 {list(w['linear_1'].weight.shape)}: [E, in, out], F = {F}")
x = C.moe_inputs(params, cfg, tokens)[0]                  # layer 0's MoE input [T, D]
probs, ids, gates = route(x, layer["router"], k)

# %% [markdown]
# ## One expert

# %%
def expert_weights(e):
    """Expert e's three matrices: views into the stacked [E, in, out] int8 tensors."""
    return [quant.QuantizedWeight8bit(w[n].weight[e], w[n].scales[e])
            for n in ("linear", "linear_v", "linear_1")]


e = int(ids[0, 0])
rows = np.nonzero((ids == e).any(-1))[0]
print(f"expert {e} was chosen by tokens {rows.tolist()}")
y = expert(x[rows], *expert_weights(e))
C.peek(f"x[rows] [{len(rows)}, D]", x[rows])
C.peek(f"x W (expert {e}) [.., F]", quant.linear(x[rows], expert_weights(e)[0]))
C.peek(f"expert_{e}(x) [.., D]", y)

# %% [markdown]
# ## tanh GELU vs erf GELU
# Close, but not equal: the difference is largest around $|z| \approx 2$.

# %%
z = np.linspace(-5, 5, 1001).astype(np.float32)
erf_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z.astype(float)])
diff = np.abs(gelu(z) - erf_gelu)
print(f"max |gelu_tanh - gelu_erf| on [-5, 5] = {diff.max():.2e} at z = {z[diff.argmax()]:.2f}")

# %% [markdown]
# ## Top-2 mixing, and the dense equivalent
# `moe` runs each chosen expert on its tokens and adds `gate * output`. The official way
# (every expert on every token, unchosen gates 0) gives the same sum. (A long prompt's
# tokens meet an expert `EXPERT_ROWS` = 1024 at a time: Grok-1's [tokens, 32768]
# activations would otherwise grow with the prompt.)

# %%
out, _, _, _ = moe(x, layer["router"], **w, num_selected=k)
dense_gates = np.zeros((len(tokens), E), np.float32)
np.put_along_axis(dense_gates, ids, gates, axis=-1)          # [T, E], two non-zeros a row
dense = sum(dense_gates[:, [e]] * expert(x, *expert_weights(e)) for e in range(E))
C.peek("moe(x) [T, D]", out)
C.peek("all 8 experts, masked", dense)
print("max |difference|:", float(np.abs(out - dense).max()))
print(f"expert matrix products: sparse {int((ids >= 0).sum())} token-experts, dense {len(tokens) * E}")

# %% [markdown]
# ## Expert load
# 64 fixed random tokens through every layer: how many pick each expert (first or second
# choice)? With uniform routing each expert would get $64 \cdot 2 / 8 = 16$.

# %%
rng = np.random.default_rng(9)
many = rng.integers(3, cfg.vocab_size, 64)
load = np.zeros((cfg.num_layers, E), int)
for i, xi in enumerate(C.moe_inputs(params, cfg, many)):
    _, chosen, _ = route(xi, params["layers"][i]["router"], k)
    load[i] = np.bincount(chosen.ravel(), minlength=E)
print("tokens per expert (rows: layers):")
print(load)
print(f"busiest expert takes {load.max(1).mean() / (2 * len(many)):.0%} of the token-slots on "
      f"average (uniform: {1 / E:.0%})")

fig, axes = C.plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained",
                           gridspec_kw={"width_ratios": [1.3, 1]})
im = axes[0].imshow(load, cmap="YlOrRd", aspect="auto")
for (i, j), n in np.ndenumerate(load):
    axes[0].text(j, i, str(n), ha="center", va="center", fontsize=6)
axes[0].set_xlabel("expert")
axes[0].set_ylabel("layer")
axes[0].set_xticks(range(E))
axes[0].set_title(f"tokens routed to each expert ({len(many)} tokens, top-{k})")
fig.colorbar(im, ax=axes[0])
axes[1].bar(range(E), load.mean(0), color="tab:orange")
axes[1].axhline(2 * len(many) / E, color="gray", ls="--", label="uniform")
axes[1].set_xlabel("expert")
axes[1].set_ylabel("tokens per layer (mean)")
axes[1].set_title("mean load over layers")
axes[1].legend()
C.save_figure(fig, "expert_load")

# %% [markdown]
# ## Try this
# - Swap `linear` and `linear_v` (GELU on the other branch): how far does `moe(x)` move?
# - Route with top-1 instead of top-2 (`num_selected=1`): how much of the output is lost?
# - Exercise: `python -m minigrok exercises check expert_ffn`.
#
# ## On the real model

# %%
D, Fr, L, Er = C.GROK1.emb_size, C.GROK1.ffn_size, C.GROK1.num_layers, C.GROK1.num_experts
one = 3 * D * Fr
print(f"one expert: 3 x {D} x {Fr} = {C.fmt_count(one)} int8 weights = {C.fmt_bytes(one)}")
print(f"all experts: {Er} x {L} = {Er * L} of them, {C.fmt_bytes(Er * L * one)}: "
      f"{Er * L * one / 316e9:.0%} of the model")
print(f"per token: 2 per layer, {C.fmt_bytes(2 * L * one)} of int8 read and "
      f"{C.fmt_count(2 * 2 * L * one)} FLOPs (2 per weight)")
print(f"the official dense way would compute all {Er}: {C.fmt_count(2 * Er * L * one)} FLOPs per token")
