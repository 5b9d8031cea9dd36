# %% [markdown]
# # Lesson 08: the router
#
# **Goal.** Decide, for every token and every layer, which 2 of the 8 experts process it and
# how much each one's answer counts.
#
# **The idea.** Each layer has a small float32 matrix $W_r$ [D, E] with $E = 8$. For the
# normalised token $x$ (the output of `rms_norm_2`):
#
# $$p = \mathrm{softmax}(x W_r) \in \mathbb{R}^8, \qquad
#   \{e_1, e_2\} = \text{top-2}(p), \qquad \text{gates} = (p_{e_1}, p_{e_2}).$$
#
# Three details, each a place where ports go wrong:
# 1. the softmax runs over **all 8** experts, in float32, *before* choosing;
# 2. the gates are those two probabilities **as they are**: they sum to less than 1 and are
#    **not renormalised** (Mixtral-style code renormalises; lesson 13 shows why that bug is
#    invisible in Grok-1's logits);
# 3. on an exact tie the lower expert index wins (`jax.lax.top_k`).
#
# The router never sees padding specially: the official MoE layer drops its padding mask, so
# a pad token is routed like any other.
#
# **The code.** `minigrok/reference/moe.py`: `route(x, router, k)` returns `probs` [T, E],
# `expert_ids` [T, k] and `gates` [T, k].

# %%
import _common as C
import numpy as np
from minigrok.reference.moe import route

args = C.setup(8, "the router")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
E, k = cfg.num_experts, cfg.num_selected_experts
xs = C.moe_inputs(params, cfg, tokens)                  # [L] x [T, D], the routers' inputs
router = params["layers"][0]["router"]
print(f"router of layer 0: {np.asarray(router).dtype} {list(np.shape(router))} = [D, E]")

# %% [markdown]
# ## Routing the sentence at layer 0

# %%
probs, ids, gates = route(xs[0], router, k)
print(f"probs {list(probs.shape)}, expert_ids {list(ids.shape)}, gates {list(gates.shape)}")
print(f"{'token':>12}  " + " ".join(f"e{e:<5}" for e in range(E)) + "  chosen   gates          sum")
for t, piece in enumerate(C.labels(tokens)):
    row = " ".join(f"{p:.3f}" for p in probs[t])
    print(f"{piece:>12}  {row}  {ids[t].tolist()}   {np.array2string(gates[t], precision=3)}  "
          f"{gates[t].sum():.3f}")
print("probabilities sum to 1 per token:", np.allclose(probs.sum(-1), 1))
print("gates are probs at the chosen ids:", np.array_equal(gates, np.take_along_axis(probs, ids, -1)))
print(f"gates sum to {gates.sum(-1).min():.3f} .. {gates.sum(-1).max():.3f}, not 1: not renormalised")

# %% [markdown]
# ## Across all layers
# How confident is the router? The mean top-1 probability and the mean gate sum per layer.

# %%
for i, x in enumerate(xs):
    p, e, g = route(x, params["layers"][i]["router"], k)
    print(f"layer {i:>2}: top-1 prob {p.max(-1).mean():.3f}, gate sum {g.sum(-1).mean():.3f}, "
          f"experts used {sorted(set(e.ravel().tolist()))}")

fig, axes = C.plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
for ax, layer in zip(axes, (0, cfg.num_layers - 1)):
    p, e, _ = route(xs[layer], params["layers"][layer]["router"], k)
    ax.imshow(p, vmin=0, vmax=1, cmap="magma", aspect="auto")
    for t in range(len(tokens)):
        for slot in range(k):
            ax.text(e[t, slot], t, "1" if slot == 0 else "2", ha="center", va="center",
                    color="cyan", fontsize=8, fontweight="bold")
    ax.set_xticks(range(E))
    ax.set_xlabel("expert")
    ax.set_yticks(range(len(tokens)), C.labels(tokens), fontsize=7)
    ax.set_title(f"layer {layer}: router probabilities (1, 2 = chosen)")
fig.colorbar(axes[1].images[0], ax=axes, shrink=0.8, label="probability")
C.save_figure(fig, "router_probabilities")

# %% [markdown]
# ## Ties
# With equal logits every expert has probability 1/8; `route` takes experts 0 and 1, as
# `jax.lax.top_k` would.

# %%
p, e, g = route(np.zeros((1, cfg.emb_size), np.float32), router, k)
print("all-zero input: probs", p[0], "-> experts", e[0].tolist(), "gates", g[0])

# %% [markdown]
# ## Try this
# - Renormalise the gates (`gates / gates.sum(-1, keepdims=True)`): how big is the change
#   to the MoE output? Then read lesson 13 to see where that change disappears.
# - Which token of the sentence has the least confident router at the last layer?
# - Exercise: `python -m minigrok exercises check router_top2`.
#
# ## On the real model

# %%
D, L, Er = C.GROK1.emb_size, C.GROK1.num_layers, C.GROK1.num_experts
print(f"routers: {L} x [{D}, {Er}] float32 = {C.fmt_bytes(L * D * Er * 4)}, "
      f"{C.fmt_count(2 * D * Er * L)} FLOPs per token: nothing")
F = C.GROK1.ffn_size
expert = 3 * D * F
print(f"what the choice decides: which 2 of {Er} experts of {C.fmt_bytes(expert)} (int8) each "
      f"are read, per layer: {C.fmt_bytes(2 * expert)} of {C.fmt_bytes(Er * expert)}")
