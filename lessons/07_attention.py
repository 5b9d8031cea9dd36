# %% [markdown]
# # Lesson 07: grouped-query attention, soft-capping and masks
#
# **Goal.** Compute one layer's self-attention exactly as Grok-1 does: 48 query heads
# sharing 8 key/value heads, scores squashed by a soft cap, a causal mask and a padding mask.
#
# **The idea.** For the normalised input $x$ [T, D]:
# $q = x W_q$ reshaped to [T, H, d], $k = x W_k$, $v = x W_v$ to [T, K, d], no biases;
# RoPE on $q$ and $k$ (lesson 06). *Grouped-query attention*: $G = H / K$ query heads share
# one key/value head; the official code reshapes $q$ to [T, K, G, d], so query head $h$ reads
# kv head $\lfloor h / G \rfloor$. For each head:
#
# $$s_{ts} = 30 \tanh\!\Big(\frac{(q_t \cdot k_s) \cdot \text{attn\_output\_multiplier}}{30}\Big),
#   \qquad p_{t\cdot} = \mathrm{softmax}_s\big(s_{ts} \text{ if } s \le t \text{ and token}_s \ne
#   \text{pad, else } -10^{30}\big).$$
#
# The multiplier is $1/\sqrt{d}$, applied once. The *soft cap* keeps every score in
# $(-30, 30)$: near 0 it is the identity, far out it saturates, so no single key can take
# all the weight by a huge margin. Masked scores are $-10^{30}$, a finite number: a query that
# may see no key at all (a pad token with only pads before it) gets a uniform row instead of
# NaN. Output: $\sum_s p_{ts} v_s$ for every head, heads flattened to [T, H d], then
# $W_o$ (`linear`).
#
# **The code.** `minigrok/reference/attention.py`: `attention_weights` (scores, cap, masks, softmax),
# `context` (the weighted sum of values, a block of queries at a time, so that a long prompt
# never holds all its [H, T, S] scores at once) and `attention` (projections, RoPE,
# grouping, cache, output projection). The code writes the two head-wise products as
# batched matrix products; the `einsum` lines below say the same thing more readably.

# %%
import _common as C
import numpy as np
from minigrok.reference import quant
from minigrok.reference.attention import MASKED, SCORE_BYTES, SOFT_CAP, attention, attention_weights
from minigrok.reference.model import embed, forward
from minigrok.reference.rmsnorm import rms_norm
from minigrok.reference.rope import apply_rope

args = C.setup(7, "grouped-query attention, soft-capping and masks")
model = C.load(args)
cfg, params = model.config, model.params
H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
G = H // K
print(f"H = {H} query heads, K = {K} kv heads, G = {G} query heads per kv head, d = {d}")

# A pad token (id 0) in the middle of the sentence: nobody may attend to it.
tokens = np.concatenate([C.tokens_for(cfg)[:4], [cfg.pad_token], C.tokens_for(cfg)[4:10]])
keep = tokens > cfg.pad_token
T = len(tokens)
print("tokens:", tokens.tolist(), " keep:", keep.astype(int).tolist())

# %% [markdown]
# ## Projections, RoPE, grouping

# %%
layer = params["layers"][0]
w = layer["multi_head_attention"]
x = rms_norm(embed(params, cfg, tokens), layer["rms_norm"])
positions = np.arange(T)
q = apply_rope(quant.linear(x, w["query"]).reshape(T, H, d), positions)
k = apply_rope(quant.linear(x, w["key"]).reshape(T, K, d), positions)
v = quant.linear(x, w["value"]).reshape(T, K, d)
C.peek("q [T, H, d]", q)
C.peek("k [T, K, d]", k)
C.peek("v [T, K, d]", v)
qg = q.reshape(T, K, G, d)
print(f"q reshaped to [T, K, G, d] = {list(qg.shape)}: query head h is qg[:, h // {G}, h % {G}]")
print("query heads reading kv head 0:", [h for h in range(H) if h // G == 0])

# %% [markdown]
# ## Scores, soft cap, masks
# Layer 0's scores on this short prompt, before and after the cap; how much the cap acts on
# every layer is measured further down.

# %%
raw = np.einsum("tkgd,skd->kgts", qg, k) * np.float32(cfg.attn_output_multiplier)
print(f"raw scores (after the multiplier): max |s| = {np.abs(raw).max():.3f}; after the cap: "
      f"max |30 tanh(s/30)| = {np.abs(SOFT_CAP * np.tanh(raw / SOFT_CAP)).max():.3f}")
for s in (1, 10, 30, 100, 1000):
    print(f"  soft_cap({s:>4}) = {SOFT_CAP * np.tanh(s / SOFT_CAP):8.4f}")
probs = attention_weights(qg, k, keep, 0, cfg.attn_output_multiplier)      # [K, G, T, S]
print("probs:", list(probs.shape), "= [K, G, T, S]")
print("rows sum to 1:", np.allclose(probs.sum(-1), 1))
print("weight on the pad key (column 4), every head and query:", float(probs[..., 4].max()))
print("weight on later keys (upper triangle):", float(np.triu(probs, 1).max()))
print(f"masked scores are {MASKED:g}, so the pad query's own row (it sees keys 0..3) is fine:",
      probs[0, 0, 4, :6])

# %% [markdown]
# ## Output, checked against minigrok's `attention`

# %%
context = np.einsum("kgts,skd->tkgd", probs, v).reshape(T, H * d)
out = quant.linear(context, w["linear"])
ref = attention(x, **w, num_q_heads=H, num_kv_heads=K, key_size=d,
                multiplier=cfg.attn_output_multiplier, keep=keep)
C.peek("by hand [T, D]", out)
C.peek("reference attention()", ref)
print("max |difference|:", float(np.abs(out - ref).max()))

# %% [markdown]
# ## What the trained heads do
# Now the whole story, without a pad, through all the layers, keeping every head's weights.
# Two learned behaviours are easy to measure. A *previous-token head* puts its weight on
# position $t-1$: it lets the next layers know what came just before. A *copying head*
# finds, when the next token already appeared in the context, that earlier occurrence and
# copies it forward: after "Mia lost her", the story's " red" is at hand, and an
# *induction head* finds it by looking for what followed the same word before. Its score:
# at each position whose next token occurred earlier (not at $t-1$, the previous-token
# head's place), the weight on those earlier occurrences. Both are compared with a head that
# spreads its weight evenly over the keys it may see. Random heads stay near that baseline:
# on a random tiny model the best of its 192 heads reaches about a fifth on both measures,
# by chance alone, since one short story offers only a handful of such queries. A trained
# head earns its place by how far it rises above that, and by where its weight lands in the
# table below.

# %%
story = C.tokens_for(cfg)
n = len(story)
trace = {}
forward(params, cfg, story, trace=trace)
P = np.stack([trace["layers"][i]["attn_probs"] for i in range(cfg.num_layers)])   # [L, H, T, S]
even = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]      # weight 1/(t+1) per key
t = np.arange(1, n)
prev = P[:, :, t, t - 1].mean(-1)                                           # [L, H]
pl, ph = np.unravel_index(prev.argmax(), prev.shape)
print(f"previous-token head: layer {pl} head {ph}, {prev[pl, ph]:.0%} of its weight on the "
      f"previous token (an even spread: {even[t, t - 1].mean():.0%}; the median head: "
      f"{np.median(prev):.0%})")

# Each query whose next token occurred earlier, and where (before t - 1). Each repeated
# token counts once, however often it follows: " a" must not outweigh " Mia".
copies = {q: [j for j in range(q - 1) if story[j] == story[q + 1]] for q in range(n - 1)}
copies = {q: js for q, js in copies.items() if js}
repeated = sorted({int(story[q + 1]) for q in copies})


def copying(p):
    """[..., T, S] weights -> [...]: the mean weight on earlier occurrences of the next
    token, over its queries, then over the repeated tokens."""
    per = [np.mean([p[..., q, js].sum(-1) for q, js in copies.items() if story[q + 1] == r],
                   axis=0) for r in repeated]
    return np.mean(per, axis=0)


copy = copying(P)                                                          # [L, H]
cl, ch = np.unravel_index(copy.argmax(), copy.shape)
print(f"copying head: layer {cl} head {ch}, {copy[cl, ch]:.0%} of its weight on an earlier "
      f"occurrence of the next token (an even spread: {copying(even):.0%}; the median head: "
      f"{np.median(copy):.0%})")
pieces = C.labels(story)
for q, js in copies.items():
    print(f"  at {pieces[q]!r:>9} (next {pieces[q + 1]!r}): {P[cl, ch, q, js].sum():4.0%} on "
          f"position{'s' * (len(js) > 1)} {', '.join(map(str, js))}")
verdict = "clearly" if copy[cl, ch] > 0.4 else "not clearly"
print(f"the best copying head rises {verdict} above what random heads reach by chance (~20%)")

# %% [markdown]
# On the built-in model the previous-token head is real, but the copying head is not: the
# model has not learned to copy an arbitrary sequence from its context (the README's copy
# ratio, 0.97; lesson 16). What it does with names is look back at them, which the weight
# on " Mia" above shows, not the general mechanism of an induction head, which needs a
# previous-token head in an earlier layer and a head that matches "what followed this
# token last time". Training one is the recipe's next step.

# ## How much the cap acts
# The cap bends a score by more than 3.5% only beyond $\pm 10$, and a score of 10 already
# gives its key $e^{10} \approx 22{,}000$ times the weight of a key at 0: the softmax is
# nearly one-hot before the cap bites. So the cap changes the weights only where a model
# has pushed its scores that far. Here are all the story's scores, every layer and head:

# %%
raw = []
for i in range(cfg.num_layers):
    qi = trace["layers"][i]["q"].reshape(n, K, G, d)                # [T, K, G, d]
    si = np.einsum("tkgd,skd->kgts", qi, trace["layers"][i]["k"])
    si = si * np.float32(cfg.attn_output_multiplier)                # [K, G, T, S]
    raw.append(np.where(np.tril(np.ones((n, n), bool)), si, -np.inf))           # causal only
raw = np.stack(raw)                                                             # [L, K, G, T, S]
seen = np.isfinite(raw)
capped = np.where(seen, SOFT_CAP * np.tanh(raw / SOFT_CAP), -np.inf)


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


print("softmax of the capped scores == the model's weights:",
      np.allclose(softmax(capped).reshape(P.shape), P, atol=1e-5))           # [L, H, T, S]
top = np.abs(raw[seen]).max()
moved = np.abs(softmax(raw) - softmax(capped)).max()
print(f"largest |score| {top:.2f}, capped to {SOFT_CAP * np.tanh(top / SOFT_CAP):.2f}; "
      f"{np.mean(np.abs(raw[seen]) > 10):.2%} of the scores lie beyond +-10")
verdict = "hardly" if moved < 0.01 else "a little" if moved < 0.1 else "clearly"
print(f"without the cap no attention weight would move by more than {moved:.3f}: on this "
      f"model the cap acts {verdict}")

# %% [markdown]
# How far the scores grow is up to training, and past about 10 a larger score buys a head
# almost nothing, so a small model like this one keeps nearly all of them inside the cap's
# straight part: the cap bends few scores and moves the weights by the amount printed.
# Random weights give smaller scores still (at most about 6 on the random tiny model), and
# there the cap does practically nothing. Grok-1 keeps it as a guard: in a large model
# trained long, scores can keep growing until a head puts all its weight on one key and
# training becomes unstable.

# %% [markdown]
# ## A picture
# The previous-token head and the copying head found above, on the story (circles: the
# earlier occurrences of each next token), the mask of the padded prompt, and the cap with
# the range of the story's scores.

# %%
fig, axes = C.plt.subplots(2, 2, figsize=(11, 10.5))
for ax, (l, h, what) in zip(axes[0], ((pl, ph, "previous-token"), (cl, ch, "copying"))):
    ax.imshow(P[l, h], vmin=0, vmax=1, cmap="Blues")
    ax.set_title(f"{what} head: layer {l}, query head {h} (kv head {h // G})")
    ax.set_xticks(range(n), pieces, rotation=90, fontsize=7)
    ax.set_yticks(range(n), pieces, fontsize=7)
cells = [(j, q) for q, js in copies.items() for j in js]
axes[0, 1].scatter(*zip(*cells), s=60, facecolors="none", edgecolors="tab:red", linewidths=1)
labels = C.labels(tokens[keep])                   # the one pad goes back in at its place
labels.insert(int(np.argmin(keep)), "[PAD]")
vis = (np.arange(T)[None, :] <= np.arange(T)[:, None]) & keep[None, :]
axes[1, 0].imshow(vis, cmap="Greys")
axes[1, 0].set_title("may attend: causal and not pad")
axes[1, 0].set_xticks(range(T), labels, rotation=90, fontsize=7)
axes[1, 0].set_yticks(range(T), labels, fontsize=7)
s = np.linspace(-120, 120, 481)
axes[1, 1].axvspan(-top, top, color="tab:orange", alpha=0.2, label="the story's scores")
axes[1, 1].plot(s, s, "--", color="gray", label="no cap")
axes[1, 1].plot(s, SOFT_CAP * np.tanh(s / SOFT_CAP), label="30 tanh(s / 30)")
axes[1, 1].set_ylim(-60, 60)
axes[1, 1].set_xlabel("score s")
axes[1, 1].set_title("the soft cap")
axes[1, 1].legend(fontsize=8)
fig.suptitle("Attention weights (rows: queries, columns: keys)")
fig.tight_layout()
C.save_figure(fig, "attention_pattern")

# %% [markdown]
# ## Try this
# - Remove the soft cap (`raw` instead of the capped scores) and compare the probabilities:
#   how large must a score be before the cap changes a row visibly?
# - Make every token a pad (`tokens[:] = 0`): what does each row become, and why no NaN?
# - Run this lesson on random weights (`python -m minigrok make-checkpoint --preset tiny
#   --out /tmp/tiny`, then `--checkpoint /tmp/tiny`): how far above the even spread do its
#   best previous-token and copying heads get?
# - Run `attention` again with `score_bytes=1` (one query per block; the default is
#   `SCORE_BYTES`): the output moves by float32 rounding only. Then, in `context`, let every block stop at
#   its last query (`end = offset + t + rows`) with a pad as the first token: which rows change?
# - Exercises: `python -m minigrok exercises check softcap_attention` and
#   `python -m minigrok exercises check gqa`.
#
# ## On the real model

# %%
D, L, S = C.GROK1.emb_size, C.GROK1.num_layers, C.GROK1.sequence_len
Hr, Kr, dr = C.GROK1.num_q_heads, C.GROK1.num_kv_heads, C.GROK1.key_size
weights = D * Hr * dr + 2 * D * Kr * dr + Hr * dr * D
print(f"attention weights per layer: {C.fmt_count(weights)} int8 = {C.fmt_bytes(weights)}; "
      f"{L} layers: {C.fmt_bytes(L * weights)}")
kv = 2 * Kr * dr * L * 4
print(f"KV cache per token: 2 x {Kr} heads x {dr} x {L} layers x 4 bytes = {C.fmt_bytes(kv)} "
      f"(float32, as minigrok keeps it); a full {S}-token context: {C.fmt_bytes(kv * S)}")
print(f"without GQA ({Hr} kv heads) the cache would be {Hr // Kr}x larger: {C.fmt_bytes(kv * S * Hr // Kr)}")
print(f"scores of a whole {S}-token prompt in one piece: H x S x S x 4 bytes = "
      f"{C.fmt_bytes(Hr * S * S * 4)} per layer, several times over in the softmax; "
      f"minigrok's `context` takes {SCORE_BYTES // (Hr * S * 4)} queries at a time "
      f"(its default score_bytes, SCORE_BYTES: {C.fmt_bytes(SCORE_BYTES)}), and each block reads only the keys up to its "
      f"last query: half the work")
print(f"scores and weighted sum for one new token at context {S}: 4 H d S = "
      f"{C.fmt_count(4 * Hr * dr * S)} FLOPs per layer, {C.fmt_count(4 * Hr * dr * S * L)} in all")
