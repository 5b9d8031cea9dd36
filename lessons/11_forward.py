# %% [markdown]
# # Lesson 11: the full forward pass and the logits
#
# **Goal.** Run all of Grok-1 on a sequence: ids in, one score per vocabulary entry out, for
# every position. Then read the scores.
#
# **The idea.**
#
# $$h_0 = E[\text{tokens}] \cdot m_{\text{in}}, \quad h_{i+1} = \mathrm{layer}_i(h_i)\ (i = 0
#   \ldots L-1), \quad \text{logits} = \mathrm{RMSNorm}(h_L)\, E^\top \cdot m_{\text{out}}.$$
#
# The layers run in *numeric* order 0, 1, 2, ... even though the checkpoint stores them in
# sorted-string order (lesson 02): minigrok picks each layer's tensors by name. Row $t$ of
# the logits scores the token that comes *after* position $t$; a softmax turns it into
# probabilities. Everything here runs in float32; the official code runs activations in
# bfloat16 and agrees with this to about 0.5% of the largest logit (lesson 13).
#
# **The code.** `minigrok/reference/model.py`: `embed`, `forward`, `unembed`;
# `minigrok/formats/checkpoint.py`: `model_params` (the nested parameter tree);
# `minigrok/api.py`: `Model.logits` (the same forward, from a list of ids). `forward` runs
# each layer through `layer_fn`: the reference's `decoder_layer` by default, the engine's
# own where it passes one (`Model.layer_fn`, e.g. the GPU's fused decode layer).

# %%
import _common as C
import numpy as np
from minigrok.reference.layer import decoder_layer
from minigrok.reference.model import embed, forward, unembed
from minigrok.reference.rmsnorm import rms_norm

args = C.setup(11, "the full forward pass and the logits")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
keep = tokens > cfg.pad_token
print(f"{cfg.num_layers} layers, D = {cfg.emb_size}, V = {cfg.vocab_size}; {len(tokens)} tokens")

# %% [markdown]
# ## By hand

# %%
h = embed(params, cfg, tokens)
for i, layer in enumerate(params["layers"]):
    h = decoder_layer(h, layer, cfg, keep=keep, index=i)
logits = unembed(params, cfg, rms_norm(h, params["rms_norm"]))
C.peek("logits [T, V]", logits)
ref = forward(params, cfg, tokens)
print("max |by hand - forward| =", float(np.abs(logits - ref).max()))
print("Model.logits agrees:", np.allclose(model.logits(tokens.tolist()), ref, rtol=1e-6, atol=1e-6))
last = forward(params, cfg, tokens, last_only=True)
print("last_only gives the last row only:", list(last.shape), np.allclose(last[0], ref[-1], atol=1e-6))

# %% [markdown]
# ## Reading the logits
# The top five next tokens after a few positions of the story, and the story's own next
# token with its rank. A trained model puts most of the probability on a few sensible
# tokens: after " upon" " a", after the first " red" some toy. Where the story is free
# (which name comes after " named") the mass spreads over many names. Where the story has
# already fixed the answer (" ball" after the second " red", " Mia" after "One day,") a
# model that has learnt to copy from its context (lesson 07) brings the mass back to that
# one token; the rank column shows how far this one has got.
#
# Random weights (`make-checkpoint --preset tiny`) show something else entirely: each
# layer adds only a small update to the stream, so the stream stays close to the input
# embedding and, with tied embeddings (lesson 04), every position's top "next" token is the
# current token itself, at a probability under 1% above a nearly flat tail of the other
# 131,071.

# %%
sp = C.tokenizer_or_none(model)
names = C.labels(tokens)


def piece(i):
    return repr(sp.id_to_piece(int(i))) if sp else str(int(i))


probs = np.exp(ref - ref.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
show = (1, 10, 12, 16, 21, 25)      # after "upon", "named", "Mia.", "red", "One day,", "her red"
for t in show:
    top = np.argsort(-ref[t], kind="stable")[:5]
    line = ", ".join(f"{piece(i)} {probs[t, i]:.3f}" for i in top)
    if t + 1 < len(tokens):
        rank = int((ref[t] > ref[t, tokens[t + 1]]).sum()) + 1
        line += f"   | story: {piece(tokens[t + 1])} (rank {rank})"
    print(f"after {names[t]!r:>9}: {line}")

# %%
greedy = ref.argmax(-1)
hits = greedy[:-1] == tokens[1:]
loss = -np.log(probs[np.arange(len(tokens) - 1), tokens[1:]]).mean()
print(f"the top token is the story's next token at {hits.sum()} of {len(hits)} positions; "
      f"it is the current token itself at {(greedy == tokens).sum()} of {len(tokens)}")
print(f"loss on the story: {loss:.2f} nats per token (a uniform guess: "
      f"{np.log(cfg.vocab_size):.2f})")

# %% [markdown]
# ## How sure is it?
# The entropy of row $t$, $-\sum_v p_v \log p_v$, is $\log V$ for a uniform guess and 0 for
# a certain one. The stories use only about 1,300 ids; every other id shares one embedding
# row (the model trained over the story ids plus that one row, lesson 16), so $\log$ of the
# trained count is the honest ceiling for a model that has learnt which ids occur at all.
# The rows are far below both: low after " upon" (only " a" follows), high after
# " named" (any of the names can come).
#
# On random weights every row sits just under $\log V$: the model knows nothing, and its
# top token (the current one) is a bump on a flat distribution.

# %%
E = params["in_out_embed"]
shared = (E == E[-1]).all(axis=1)       # the rows equal to the last id's: untrained ids
n_own = cfg.vocab_size - int(shared.sum()) if shared.sum() > 1 else cfg.vocab_size
if n_own < cfg.vocab_size:
    print(f"{n_own} ids have an embedding row of their own; the other {int(shared.sum())} "
          f"share one, and together take {probs[:, shared].sum(-1).max():.1e} of the "
          f"probability at most")
else:
    print("every id has an embedding row of its own (nothing here shares a row)")
entropy = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1)
print(f"entropy of each row (max log V = {np.log(cfg.vocab_size):.2f}, log {n_own} = "
      f"{np.log(n_own):.2f}):", np.round(entropy, 2))
lo, hi = int(entropy.argmin()), int(entropy.argmax())
print(f"surest after {names[lo]!r} ({entropy[lo]:.2f} nats), least sure after "
      f"{names[hi]!r} ({entropy[hi]:.2f} nats, like a choice among {np.exp(entropy[hi]):.0f} "
      f"equally likely tokens); mean {entropy.mean():.2f}")

# %%
fig, ax = C.plt.subplots(figsize=(7.5, 3.2))
x = np.arange(len(tokens))
# Rounded, so that float noise from the BLAS library never moves a pixel of the figure.
shown = np.round(entropy, 2)
ax.bar(x, shown, color="tab:blue")
ax.plot(x[:-1][hits], shown[:-1][hits] + 0.4, "v", color="tab:green", ms=5)
ax.axhline(np.log(cfg.vocab_size), color="black", ls="--", lw=1)
ax.text(0, np.log(cfg.vocab_size) - 0.15, f"log V (uniform over all {cfg.vocab_size})",
        va="top", fontsize=7)
if n_own < cfg.vocab_size:
    ax.axhline(np.log(n_own), color="gray", ls=":", lw=1)
    ax.text(0, np.log(n_own) - 0.15, f"log {n_own} (uniform over the ids with a row of "
            "their own)", va="top", fontsize=7)
ax.set_xticks(x, names, rotation=90, fontsize=7)
ax.set_ylabel("entropy of the next token (nats)")
ax.set_title("Next-token entropy after each position; ▼: the top token is the story's next")
fig.tight_layout()
C.save_figure(fig, "entropy")

# %% [markdown]
# ## The layer order matters
# The layers must run in numeric order. Read in the order their files appear (0, 1, 10,
# 11, 2, ... for Grok-1's 64 layers, lesson 02) they would run scrambled; with 4 layers the
# file order happens to be the numeric one, so here the layers are put out of order by hand:
# reversed, and two neighbours swapped (the smallest such mistake) at the start, the middle
# and the end, which with 4 layers is every pair. For each: at how many positions the
# greedy token changes, how far the logits move (against the 1% of the largest logit that
# lesson 13 allows against the official bfloat16 run), and the loss on the story.
#
# On the trained model a wrong order changes greedy tokens (the lines below count how many
# for the mildest one), so a test comparing greedy tokens over a text of this length would
# catch it; comparing logits still catches it by a wider margin, and at any single
# position, where one greedy token alone may well not change. Random weights teach the
# opposite lesson, and a wrong one: on the tiny checkpoint (12 layers) the file order
# moves the logits by about 10% of the largest, and reversing or swapping layers by 4% to
# 19%, yet *no* greedy token changes, because there every top token is the current token
# whatever the layers do. "A greedy-token test can miss a scrambled model" was a property
# of random weights more than of the test.

# %%
G = C.GROK1.num_layers
print(f"Grok-1's {G} layers in file order begin",
      sorted(range(G), key=lambda i: f"decoder_layer_{i}")[:6])
file_order = sorted(range(cfg.num_layers), key=lambda i: f"decoder_layer_{i}")
print(f"layers in file order: {file_order}")


def logits_in_order(order):
    h = embed(params, cfg, tokens)
    for j, i in enumerate(order):
        h = decoder_layer(h, params["layers"][i], cfg, keep=keep, index=j)
    return unembed(params, cfg, rms_norm(h, params["rms_norm"]))


def story_loss(logits):
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(tokens) - 1), tokens[1:]].mean()


def short(order):
    text = str(order)
    return text if len(text) <= 16 else text[:14] + "…"


L = cfg.num_layers
orders = {"file order": file_order, "reversed": list(range(L))[::-1]}
for i in sorted({0, L // 2 - 1, L - 2} - {-1}):   # at the start, middle and end (all, for 4)
    swapped = list(range(L))
    swapped[i], swapped[i + 1] = i + 1, i
    orders[f"swap {i} and {i + 1}"] = swapped
print(f"{'order':<16} {'layers':<16} greedy changed   max |diff| / max |logit|   loss")
print(f"{'numeric':<16} {short(list(range(L))):<16} {0:>3} of {len(tokens):<9} "
      f"{0:>10.1%}                {story_loss(ref):.2f}")
BF16_TOLERANCE = 1e-2                     # lesson 13's bound against the official bfloat16 run
results, last_token, last_row = {}, 0, 0
for name, order in orders.items():
    if order == list(range(L)):
        print(f"{name:<16} (the numeric order with {L} layers: nothing moves)")
        continue
    scrambled = logits_in_order(order)
    changed = int((scrambled.argmax(-1) != greedy).sum())
    err = float(np.abs(scrambled - ref).max() / np.abs(ref).max())
    results[name] = changed, err
    last_token += int(scrambled[-1].argmax() != greedy[-1])
    last_row += int(np.abs(scrambled[-1] - ref[-1]).max() > BF16_TOLERANCE * np.abs(ref).max())
    print(f"{name:<16} {short(order):<16} {changed:>3} of {len(tokens):<9} {err:>10.1%}"
          f"                {story_loss(scrambled):.2f}")

# %%
fewest = min(results, key=lambda n: results[n], default=None)
changed, err = results.get(fewest, (0, 0.0))
if fewest is None:
    print("(no order to compare: a single layer)")
elif changed:
    print(f"every wrong order changes greedy tokens: {fewest} changes the fewest, {changed} of "
          f"{len(tokens)}, so a greedy-token test over this story catches each one here. The "
          f"logits move by at least {min(e for _, e in results.values()):.0%} of the largest, "
          f"{min(e for _, e in results.values()) / BF16_TOLERANCE:.0f}x the bfloat16 "
          f"tolerance: comparing logits is still the stronger test")
    print(f"at the last position alone (one generated token) the greedy token changes for "
          f"{last_token} of the {len(results)} wrong orders; its logits move past the "
          f"tolerance for {last_row} of them")
else:
    print(f"{fewest} changes no greedy token, yet moves the logits by {err:.1%} of the largest "
          f"({err / BF16_TOLERANCE:.0f}x the bfloat16 tolerance): a test that compares only "
          f"greedy tokens misses it; compare the logits")

# %% [markdown]
# ## Try this
# - `python -m minigrok logits --tokens 3808,3038,327,677 --out l.npy` writes the logits
#   of "Once upon a time" from the command line (add `--checkpoint DIR` for another model).
# - Apply the final norm and `unembed` to the stream after *each* layer (a "logit lens"):
#   from which layer on does the final top token lead?
#
# ## On the real model

# %%
from minigrok.formats.checkpoint import active_int8_bytes

act = active_int8_bytes(C.GROK1)
V, D = C.GROK1.vocab_size, C.GROK1.emb_size
flops = 2 * act + 2 * V * D
print(f"one position: {C.fmt_bytes(act)} of int8 weights + {C.fmt_bytes(V * D * 4)} of float32 "
      f"embeddings, ~{C.fmt_count(flops)} FLOPs")
print(f"a {len(tokens)}-token prompt without a cache: ~{C.fmt_count(len(tokens) * flops)} FLOPs, "
      f"but each weight is read once for all the tokens that use it")
C.estimate("one position at 1 TFLOP/s (assumed, a large CPU)", f"{flops / 1e12:.2f} s")
