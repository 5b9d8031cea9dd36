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
import sys

import _common as C
import numpy as np
from minigrok.reference import quant
from minigrok.reference.model import forward
from minigrok.reference.moe import expert, gelu, moe, route
from minigrok.training import stories

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
# How many tokens does each expert get? The model runs over a few held-out stories
# (`stories.corpus("heldout", n)`), each layer's `trace` keeps its `expert_ids`, and the load
# of an expert is its share of the $N \cdot 2$ choices: $1/8$ each if the load were even.
#
# An even load is no property of the architecture. Nothing in the MoE layer (the official
# one or minigrok's) balances anything: no auxiliary loss, no router noise, no capacity
# limit, a token simply goes where its router points. Left alone, training tends to
# collapse onto a few favourite experts (the ones that got more tokens get better, so they
# get more tokens). The built-in model's trainer therefore added Switch Transformer's
# load-balancing loss (Fedus et al. 2021, weighted 0.01 as there; `recipe.RECIPE["balance"]`),
#
# $$\mathcal{L}_\text{balance} = E \sum_e f_e\, \bar p_e,$$
#
# $f_e$ the share of choices that went to expert $e$, $\bar p_e$ its mean router probability
# (`training/gradients.balance_loss`): 1 when the load is even, up to $E/k = 4$ when every
# token picks the same two experts. Its gradient lowers the probability of the busiest
# experts, so the load of the trained model should be fairly even: no expert idle, none
# taking most of the tokens. The lines below say how close each layer comes. (While the
# routers are hesitant, $\bar p$ is near uniform and the loss stays near 1 even for an
# uneven load: read the shares, not only the loss.)
#
# The loss is a training choice, as invisible in the checkpoint as the optimiser: the
# released Grok-1 inference code has no trace of it, and how xAI kept Grok-1's experts busy
# is not public.

# %%
sp = C.tokenizer_or_none(model)
if sp is None:
    sys.exit("the rest of this lesson encodes stories: it needs Grok-1's tokenizer.model")
texts = stories.corpus("heldout", 8)
chosen = [[] for _ in range(cfg.num_layers)]             # per layer: [T, k] per story
probs_all = [[] for _ in range(cfg.num_layers)]          # per layer: [T, E] per story
for text in texts:
    trace = {}
    # (ids folded as C.tokens_for does, for a test checkpoint with a smaller vocabulary)
    ids_s = np.array(sp.encode(text)[:cfg.sequence_len], np.int64) % cfg.vocab_size
    forward(params, cfg, ids_s, last_only=True, trace=trace)
    for i, t in trace["layers"].items():
        chosen[i].append(t["expert_ids"])
        probs_all[i].append(t["router_probs"])
chosen = np.stack([np.concatenate(c) for c in chosen])  # [L, N, k]
probs_all = np.stack([np.concatenate(p) for p in probs_all])   # [L, N, E]
N = chosen.shape[1]
load = np.stack([np.bincount(c.ravel(), minlength=E) for c in chosen]) / (N * k)   # [L, E]
balance = E * (load * probs_all.mean(1)).sum(1)          # [L], the trainer's loss per layer
print(f"{len(texts)} held-out stories, {N} tokens, {N * k} choices per layer")
print("share of the choices per expert (rows: layers), and the load-balancing loss:")
for i in range(cfg.num_layers):
    print(f"layer {i:>2}: " + " ".join(f"{v:5.1%}" for v in load[i]) + f"   loss {balance[i]:.3f}")
busy, idle = np.unravel_index(load.argmax(), load.shape), np.unravel_index(load.argmin(), load.shape)
print(f"busiest: expert {busy[1]} of layer {busy[0]} with {load[busy]:.0%} of the choices "
      f"({load[busy] * E:.1f}x an even share of {1 / E:.1%}); idlest: expert {idle[1]} of layer "
      f"{idle[0]} with {load[idle]:.1%}")
print(f"every expert of every layer is used: {bool((load > 0).all())}; mean balance loss "
      f"{balance.mean():.3f} (1 = even, {E // k} = every token on the same {k} experts)")

fig, axes = C.plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained",
                           gridspec_kw={"width_ratios": [1.3, 1]})
im = axes[0].imshow(100 * load, vmin=0, cmap="YlOrRd", aspect="auto")
for (i, j), v in np.ndenumerate(load):
    axes[0].text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6)
axes[0].set_xlabel("expert")
axes[0].set_ylabel("layer")
axes[0].set_xticks(range(E))
axes[0].set_yticks(range(cfg.num_layers))
axes[0].set_title(f"% of the choices per expert ({N} tokens of held-out stories, top-{k})")
fig.colorbar(im, ax=axes[0])
for i in range(cfg.num_layers):
    axes[1].plot(range(1, E + 1), 100 * np.sort(load[i])[::-1], "o-", ms=3, label=f"layer {i}")
axes[1].axhline(100 / E, color="gray", ls="--", label="even")
axes[1].set_xlabel("expert, busiest first")
axes[1].set_ylabel("% of the choices")
axes[1].set_title("how even is the load?")
axes[1].legend(fontsize=7, ncol=2)
C.save_figure(fig, "expert_load")

# %% [markdown]
# A random router spreads tokens fairly evenly too, by the luck of its draw (run the lesson
# with `--checkpoint` a test checkpoint). What training must achieve is both at once:
# routers that specialise (lesson 08 found kinds of token sharing experts) and a load that
# stays spread. The balancing loss is what keeps specialisation from turning into collapse.
#
# Why stories, and not random token ids? The built-in model trained only on the ~1,300 ids
# its stories use; every other id shares one embedding row (lesson 16). Random ids are
# therefore almost all *the same* token to it, and they all go to the same two experts. (On a
# random test checkpoint every id has its own row, and random ids spread over the experts
# much like the stories' tokens do.)

# %%
rng = np.random.default_rng(9)
many = rng.integers(3, cfg.vocab_size, 64)
x0 = C.moe_inputs(params, cfg, many)[0]
_, pick, _ = route(x0, layer["router"], k)
print(f"64 random token ids at layer 0: {len({tuple(r) for r in pick.tolist()})} distinct "
      f"expert pairs (the stories' first 64 tokens: "
      f"{len({tuple(r) for r in chosen[0, :64].tolist()})})")

# %% [markdown]
# ## Try this
# - Swap `linear` and `linear_v` (GELU on the other branch): how far does `moe(x)` move?
# - Route with top-1 instead of top-2 (`num_selected=1`): how much of the output is lost?
# - Run the lesson with `--checkpoint` a test checkpoint (`python -m minigrok make-checkpoint
#   --preset tiny --out /tmp/tiny`): is a random router's load more or less even?
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
