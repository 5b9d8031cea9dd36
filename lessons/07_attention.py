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
from minigrok.reference.model import embed
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
# The raw scores of this checkpoint are small, so the cap barely bends them; the cap matters
# when a trained model produces large scores (try the curve below).

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
# ## A picture
# Four query heads of layer 0 (heads 0 and 1 share kv head 0), the mask, and the cap.

# %%
fig, axes = C.plt.subplots(2, 3, figsize=(10, 6.4))
labels = C.labels(tokens[keep])                   # the one pad goes back in at its place
labels.insert(int(np.argmin(keep)), "[PAD]")
for ax, h in zip(axes.ravel()[:4], (0, 1, G, H - 1)):
    ax.imshow(probs[h // G, h % G], vmin=0, vmax=1, cmap="Blues")
    ax.set_title(f"query head {h} (kv head {h // G})")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(T), labels, fontsize=7)
vis = (np.arange(T)[None, :] <= np.arange(T)[:, None]) & keep[None, :]
axes[1, 1].imshow(vis, cmap="Greys")
axes[1, 1].set_title("may attend: causal and not pad")
axes[1, 1].set_xticks(range(T), labels, rotation=90, fontsize=7)
axes[1, 1].set_yticks(range(T), labels, fontsize=7)
s = np.linspace(-120, 120, 481)
axes[1, 2].plot(s, s, "--", color="gray", label="no cap")
axes[1, 2].plot(s, SOFT_CAP * np.tanh(s / SOFT_CAP), label="30 tanh(s / 30)")
axes[1, 2].set_ylim(-60, 60)
axes[1, 2].set_xlabel("score s")
axes[1, 2].set_title("the soft cap")
axes[1, 2].legend(fontsize=8)
fig.suptitle("Layer 0 attention (rows: queries, columns: keys)")
fig.tight_layout()
C.save_figure(fig, "attention_pattern")

# %% [markdown]
# ## Try this
# - Remove the soft cap (`raw` instead of the capped scores) and compare the probabilities:
#   how large must a score be before the cap changes a row visibly?
# - Make every token a pad (`tokens[:] = 0`): what does each row become, and why no NaN?
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
