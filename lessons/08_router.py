# %% [markdown]
# # Lesson 08: the router
#
# **Goal.** Decide, for every token and every layer, which 2 of the 8 experts process it and
# how much each one's answer counts; then see what the trained routers learned to decide.
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
# Only the two chosen experts then run (lesson 09). The router never sees padding specially:
# the official MoE layer drops its padding mask, so a pad token is routed like any other.
#
# Nothing in the formula says *what* an expert is for. Whatever division of labour there is,
# training put into $W_r$: the second half of this lesson reads it off the built-in model's
# routing of held-out stories, and compares it with random routers.
#
# **The code.** `minigrok/reference/moe.py`: `route(x, router, k)` returns `probs` [T, E],
# `expert_ids` [T, k] and `gates` [T, k]. `decoder_layer` records them in its `trace` as
# `router_probs`, `expert_ids` and `expert_gates`. Two choices of minigrok's own, neither of
# which changes the formula: the logits $x W_r$ are summed in float64 and rounded to float32
# once (`router_logits`), and the two experts are picked from the logits, which the softmax
# keeps in the same order. A float32 sum of 6144 products depends on the order the library
# adds them in, and exp can round two logits an ulp apart to one probability: either could
# swap a near-tie between numpy, CuPy and the GPU kernel. This way every device picks alike.

# %%
import sys

import _common as C
import numpy as np
from minigrok.reference.model import forward
from minigrok.reference.moe import route
from minigrok.training import stories

args = C.setup(8, "the router")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
E, k, L = cfg.num_experts, cfg.num_selected_experts, cfg.num_layers
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
# In the figure, a token whose row has one bright cell is routed decisively; a row of
# similar cells is a near-tie, where a small change of $x$ can swap the chosen experts.

# %%
for i, x in enumerate(xs):
    p, e, g = route(x, params["layers"][i]["router"], k)
    print(f"layer {i:>2}: top-1 prob {p.max(-1).mean():.3f}, gate sum {g.sum(-1).mean():.3f}, "
          f"experts used {sorted(set(e.ravel().tolist()))}")

fig, axes = C.plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
for ax, layer in zip(axes, (0, L - 1)):
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
# ## Routing held-out stories
# One sentence is too few tokens to see a pattern. The model runs over a few stories it never
# trained on (`stories.corpus("heldout", n)`), and each layer's `trace` keeps its routing.
# `last_only=True` skips the [T, V] logits, which this lesson does not need.

# %%
sp = C.tokenizer_or_none(model)
if sp is None:
    sys.exit("the rest of this lesson encodes stories: it needs Grok-1's tokenizer.model")
texts = stories.corpus("heldout", 8)
story_ids, positions, traces = [], [], []
for text in texts:
    ids_s = np.array(sp.encode(text)[:cfg.sequence_len], np.int64)
    trace = {}
    # (ids folded as C.tokens_for does, for a test checkpoint with a smaller vocabulary)
    forward(params, cfg, ids_s % cfg.vocab_size, last_only=True, trace=trace)
    story_ids.append(ids_s)
    positions.append(np.arange(len(ids_s)))
    traces.append(trace["layers"])
story_ids, positions = np.concatenate(story_ids), np.concatenate(positions)      # [N], [N]


def gather(name):
    """One trace entry of every layer, the stories' tokens end to end: [L, N, ...]."""
    return np.stack([np.concatenate([t[i][name] for t in traces]) for i in range(L)])


X, P = gather("moe_in"), gather("router_probs")          # [L, N, D], [L, N, E]
I, G = gather("expert_ids"), gather("expert_gates")     # [L, N, k], [L, N, k]
N = len(story_ids)
print(f"{len(texts)} held-out stories, {N} tokens: router_probs {list(P.shape)} = [L, N, E]")

# %% [markdown]
# ## How sure is the router?
# Two numbers per layer: the mean top-1 probability ($1/8$ is no preference, 1 is certainty)
# and the mean gate sum, the weight the two experts' answers get. The gates are not
# renormalised, so a hesitant router scales its MoE output down (`rms_norm_3` after the MoE
# undoes most of that: lesson 13), and the probability left on the 6 unchosen experts is
# simply dropped.
#
# Beside the model's routers, the same inputs go through random ones, drawn at two scales:
# the trainer's own starting point (`recipe.init_params`: std $0.1/\sqrt{D}$, so that routing
# starts near uniform and the load even) and `make-checkpoint`'s test checkpoints (std
# $4/\sqrt{D}$, logits of std about 4: decisive from the start). A random router is as
# confident as its scale makes it, so confidence alone is no sign of learning: the built-in
# model's routers started at the first scale, and the printed line says how far training
# moved them; the next two sections ask whether their choices group tokens sensibly.

# %%
rng = np.random.default_rng(8)
draws = rng.standard_normal((L, cfg.emb_size, E)).astype(np.float32)   # one router per layer
sure = {"this model": np.stack([P.max(-1).mean(1), G.sum(-1).mean(1)], 1)}     # [L, 2]
for name, scale in (("random, at init", 0.1), ("random, test ckpt", 4.0)):
    got = [route(X[i], draws[i] * np.float32(scale / np.sqrt(cfg.emb_size)), k) for i in range(L)]
    sure[name] = np.array([[p.max(-1).mean(), g.sum(-1).mean()] for p, _, g in got])
scales = list(sure)
print(" " * 8 + "".join(f"{name:>22}" for name in scales))
print(" " * 8 + "  top-1 prob  gate sum" * len(scales))
for i in range(L):
    print(f"layer {i:>2}" + "".join(f"{sure[n][i, 0]:>12.3f}{sure[n][i, 1]:>10.3f}" for n in scales))
ours, start, decisive = (sure[n].mean(0) for n in scales)        # [top-1, gate sum] each
print(f"this model's routers give their first choice {ours[0]:.0%} on average, "
      f"{ours[0] / start[0]:.1f}x what routers at the trainer's initial scale give "
      f"({start[0]:.0%}; uniform is {1 / E:.1%}) and {ours[0] / decisive[0]:.1f}x a test "
      f"checkpoint's ({decisive[0]:.0%})")
print(f"gate sum {ours[1]:.2f} on average: {1 - ours[1]:.0%} of the router's probability "
      f"sits on the {E - k} experts that do not run")

# %% [markdown]
# ## What the experts are for: kinds of token
# Each token gets a label: a *name* (every piece of a child's or a pet's name:
# `stories.GIRLS`, `BOYS`, `PET_NAMES`), a *function word* (a short closed list: articles,
# pronouns, prepositions, "was", "had", ...), *punctuation* (with line breaks and quotes) or a
# *content word* (the rest: nouns, verbs, adjectives). The figure shows, per layer (four of
# them in a deeper model), the share of each kind's choices (two per token) that each expert
# takes, above the share of all choices ("all"). An expert that specialises in a kind stands
# out in that kind's row far above its "all" row.

# %%
NAMES = set(stories.GIRLS + stories.BOYS + stories.PET_NAMES)
# ("s" is the s of "'s", which the tokenizer splits off after an apostrophe)
FUNCTION = set("a an the and but or so then to of in on at by for from with into up out as "
               "he she it they we you i him her them us me his its their our my your "
               "was were is are be been had has have did do not that this there s".split())
KINDS = ("name", "function", "content", "punct")
PLURAL = ("names", "function words", "content words", "punctuation marks")


def kinds_of(pieces):
    """A kind per piece. A word is a piece that starts with ▁ (or follows punctuation) with
    the letter pieces that continue it; every piece of a word gets the word's kind."""
    out, word = [], []

    def close():
        w = "".join(p.lstrip("▁") for p in word)
        out.extend([0 if w in NAMES else 1 if w.lower() in FUNCTION else 2] * len(word))
        word.clear()

    for p in pieces:
        if not p.lstrip("▁").isalpha():
            if word:
                close()
            out.append(3)
        else:
            if p.startswith("▁") and word:
                close()
            word.append(p)
    if word:
        close()
    return out


kind = np.concatenate([kinds_of(sp.encode(t, out_type=str)[:cfg.sequence_len]) for t in texts])
print("tokens per kind:", {KINDS[c]: int((kind == c).sum()) for c in range(len(KINDS))})
share = np.zeros((L, len(KINDS) + 1, E))                 # [L, kinds + all, E], fractions
for i in range(L):
    for c in range(len(KINDS)):
        share[i, c] = np.bincount(I[i][kind == c].ravel(), minlength=E) / (k * (kind == c).sum())
    share[i, -1] = np.bincount(I[i].ravel(), minlength=E) / I[i].size
for i in range(L):
    c, e = np.unravel_index(np.argmax(share[i, :-1] - share[i, -1]), (len(KINDS), E))
    print(f"layer {i}: {PLURAL[c]} send {share[i, c, e]:.0%} of their choices to expert {e}, "
          f"which takes {share[i, -1, e]:.0%} of all choices")

shown = sorted(set(np.linspace(0, L - 1, min(L, 4)).round().astype(int).tolist()))
fig, axes = C.plt.subplots(1, len(shown), figsize=(2.6 * len(shown) + 1, 3.2), sharey=True,
                           layout="constrained")
for ax, i in zip(np.atleast_1d(axes), shown):
    ax.imshow(100 * share[i], vmin=0, vmax=100 * share.max(), cmap="Blues", aspect="auto")
    for (r, e), v in np.ndenumerate(share[i]):
        ax.text(e, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                color="white" if v > 0.6 * share.max() else "black")
    ax.axhline(len(KINDS) - 0.5, color="black", lw=1)
    ax.set_xticks(range(E))
    ax.set_xlabel("expert")
    ax.set_yticks(range(len(KINDS) + 1), [*KINDS, "all"])
    ax.set_title(f"layer {i}")
fig.colorbar(np.atleast_1d(axes)[-1].images[0], ax=axes, shrink=0.8,
             label="% of the kind's choices")
fig.suptitle(f"where each kind of token is routed ({len(texts)} held-out stories, top-{k})")
C.save_figure(fig, "expert_specialisation")

# %% [markdown]
# ## Token, kind or position?
# A sharper test counts pairs of tokens: how often do two of them pick the same first expert?
# Two occurrences of the *same* token id; two *different* token ids of one kind (two
# different names, two different function words, ...); two different token ids in the same
# band of 32 positions; and any two different token ids (chance, given the load). At layer 0
# the router's input is little more than the token's own embedding, so one token goes to one
# expert there, trained or random; deeper, the context that attention mixed in can move it.

# %%
band = positions // 32


def pairs(first, *labels):
    """(pairs of tokens with equal labels and the same first expert, pairs with equal labels)."""
    key = np.unique(np.stack([np.zeros_like(first), *labels], 1), axis=0,
                    return_inverse=True)[1].ravel()
    counts = np.zeros((key.max() + 1, E))
    np.add.at(counts, (key, first), 1)                   # [groups, E]
    n = counts.sum(1)
    return (counts * (counts - 1)).sum(), (n * (n - 1)).sum()


def agree(first, ids, *labels):
    """The share of pairs with equal labels but different token ids that agree."""
    same, total = pairs(first, *labels)
    same_id, total_id = pairs(first, *labels, ids)
    return (same - same_id) / (total - total_id)


columns = ["token", *KINDS, "position", "chance"]
print("pairs with the same first expert: the same token; different tokens of one kind; of one "
      "position band; any two different tokens\n" + " " * 8 + "".join(f"{c:>10}" for c in columns))
agreement = np.zeros((L, len(columns)))
for i in range(L):
    first = I[i, :, 0]
    same, total = pairs(first, story_ids)
    agreement[i] = [same / total,
                    *(agree(first[kind == c], story_ids[kind == c]) for c in range(len(KINDS))),
                    agree(first, story_ids, band), agree(first, story_ids)]
    print(f"layer {i:>2}" + "".join(f"{v:>10.0%}" for v in agreement[i]))
mean = agreement.mean(0)
chance = mean[-1]
c = int(np.argmax(mean[1:1 + len(KINDS)]))
print(f"over the layers: the token itself "
      f"{'decides most' if mean[0] >= mean[1:-1].max() else 'decides less'} "
      f"({mean[0]:.0%} of same-token pairs agree); "
      f"two different {PLURAL[c]} agree {mean[1 + c]:.0%}, {mean[1 + c] / chance:.1f}x chance "
      f"({chance:.0%}); two tokens at nearby positions {mean[-2]:.0%}, "
      f"{mean[-2] / chance:.1f}x chance")

# %% [markdown]
# On random weights (a test checkpoint) the first column stays high: a router is a fixed
# function of its input, and at layer 0 the input is the token. What training adds is the
# kind columns rising above chance: different tokens of one kind sharing experts (the line
# above names the kind that shares most).
# Position adds little either way: the router sees it only through attention's output.

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
# - Split "content" into nouns, verbs and adjectives (`stories.TOYS`, `COLORS`, ...): does
#   an expert take the colours?
# - Run the lesson with `--checkpoint` a test checkpoint (`python -m minigrok make-checkpoint
#   --preset tiny --out /tmp/tiny`): which conclusions survive random weights?
# - Exercise: `python -m minigrok exercises check router_top2`.
#
# ## On the real model

# %%
D, Lr, Er = C.GROK1.emb_size, C.GROK1.num_layers, C.GROK1.num_experts
print(f"routers: {Lr} x [{D}, {Er}] float32 = {C.fmt_bytes(Lr * D * Er * 4)}, "
      f"{C.fmt_count(2 * D * Er * Lr)} FLOPs per token: nothing")
F = C.GROK1.ffn_size
expert = 3 * D * F
print(f"what the choice decides: which 2 of {Er} experts of {C.fmt_bytes(expert)} (int8) each "
      f"are read, per layer: {C.fmt_bytes(2 * expert)} of {C.fmt_bytes(Er * expert)}")
