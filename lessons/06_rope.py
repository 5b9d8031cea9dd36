# %% [markdown]
# # Lesson 06: rotary position embeddings (RoPE)
#
# **Goal.** Give attention a sense of order: rotate each query and key by an angle that
# grows with its position, so that their dot product depends on how far apart they are.
#
# **The idea.** Cut a head vector $x \in \mathbb{R}^d$ into two halves $x_1, x_2$ (Grok-1's
# *rotate-half* layout; other models pair neighbours $x_{2i}, x_{2i+1}$ instead). Feature $i$
# of $x_1$ and feature $i$ of $x_2$ form a 2-D point, rotated by
#
# $$\theta_i(p) = p \cdot \text{base}^{-2i/d}, \qquad i = 0 \ldots d/2 - 1,\ \text{base} = 10000.$$
#
# With the angles tiled twice, $\theta = [\theta_0 \ldots \theta_{d/2-1}, \theta_0 \ldots]$:
#
# $$\mathrm{RoPE}(x, p) = x \odot \cos\theta(p) + \mathrm{rotate\_half}(x) \odot \sin\theta(p),
#   \qquad \mathrm{rotate\_half}(x) = [-x_2, x_1].$$
#
# A rotation keeps lengths, position 0 is the identity, and since rotating $q$ by $\alpha$
# and $k$ by $\beta$ changes $q \cdot k$ only through $\alpha - \beta$, the score of a query
# at $m$ and a key at $n$ depends only on $m - n$. Pair 0 turns by 1 radian per token; the
# last pair by $10000^{-(d-2)/d}$ radians per token, so slowly it never completes a turn in
# Grok-1's 8192-token context.
#
# **The code.** `minigrok/reference/rope.py`: `rope_angles`, `rotate_half`, `apply_rope`. RoPE is
# applied to queries and keys (not values) inside `attention`, at positions that start at
# the KV-cache length.

# %%
import _common as C
import numpy as np
from minigrok.reference import quant
from minigrok.reference.layer import decoder_layer
from minigrok.reference.model import embed
from minigrok.reference.rmsnorm import rms_norm
from minigrok.reference.rope import BASE, apply_rope, rope_angles, rotate_half

args = C.setup(6, "RoPE")
rng = np.random.default_rng(6)

# %% [markdown]
# ## Angles and the rotate-half pairing

# %%
d = 8
angles = rope_angles(np.arange(4), d)
print("angles [positions 0..3, d = 8] (the d/2 frequencies, tiled twice):")
print(angles)
v = np.arange(1, d + 1, dtype=np.float32)
print("x              =", v)
print("rotate_half(x) =", rotate_half(v), " (feature i pairs with feature i + d/2)")

# %% [markdown]
# ## The three properties

# %%
x = rng.standard_normal((5, 3, 16)).astype(np.float32)          # [T, heads, d]
pos = np.array([0, 1, 7, 100, 4000])
y = apply_rope(x, pos)
print("position 0 is the identity:", np.allclose(y[0], x[0]))
print("lengths kept: max |  |rope(x)| - |x|  | =",
      float(np.abs(np.linalg.norm(y, axis=-1) - np.linalg.norm(x, axis=-1)).max()))
q, k = x[1, :1], x[2, :1]                                         # [1 head, d]
for m, n in ((3, 1), (103, 101), (5003, 5001), (10, 1)):
    s = float((apply_rope(q[None], np.array([m])) * apply_rope(k[None], np.array([n]))).sum())
    print(f"q at {m:>4}, k at {n:>4} (distance {m - n:>2}): q.k = {s:+.5f}")

# %% [markdown]
# ## On the checkpoint's queries
# Layer 0's queries for the story's tokens (`C.TOKENS`), before and after RoPE.

# %%
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
attn = params["layers"][0]["multi_head_attention"]
x0 = rms_norm(embed(params, cfg, tokens), params["layers"][0]["rms_norm"])
qh = quant.linear(x0, attn["query"]).reshape(len(tokens), cfg.num_q_heads, cfg.key_size)
rotated = apply_rope(qh, np.arange(len(tokens)))
print("q:", qh.dtype, list(qh.shape), "= [T, H, d]")
C.peek("token 0 (position 0) before", qh[0])
C.peek("token 0 after: unchanged", rotated[0])
C.peek("token 5 (position 5) before", qh[5])
C.peek("token 5 after: rotated", rotated[5])

# %% [markdown]
# ## Which pairs does the model use?
# A score is a sum over the pairs, $q \cdot k = \sum_i (q_{1,i} k_{1,i} + q_{2,i} k_{2,i})$,
# each term a 2-D dot product that turns with the distance at its own pair's speed. A pair
# that turns fast tells near keys from far ones; a pair whose wavelength is much longer than
# the context hardly turns at all and matches content wherever it is. How much each pair
# contributes is up to the weights: below, each pair's share of $|$its term$|$, averaged
# over every head and every (query, earlier key) of the story, layer by layer (each layer's
# input from `decoder_layer`). Random weights spread it evenly, $1/(d/2)$ per pair.

# %%
T, d, G = len(tokens), cfg.key_size, cfg.num_q_heads // cfg.num_kv_heads
pair_wavelength = 2 * np.pi * BASE ** (np.arange(0, d, 2) / d)
earlier = np.tril(np.ones((T, T), bool))                         # [T queries, T keys]
h, shares = embed(params, cfg, tokens), []
for i, layer in enumerate(params["layers"]):
    x = rms_norm(h, layer["rms_norm"])
    mha = layer["multi_head_attention"]
    q = apply_rope(quant.linear(x, mha["query"]).reshape(T, cfg.num_q_heads, d), np.arange(T))
    k = apply_rope(quant.linear(x, mha["key"]).reshape(T, cfg.num_kv_heads, d), np.arange(T))
    k = np.repeat(k, G, axis=1)                                  # [T, H, d]: head h reads kv h // G
    terms = q[:, None] * k[None]                                 # [T, T, H, d]
    terms = np.abs(terms[..., :d // 2] + terms[..., d // 2:])    # [T, T, H, d/2]: one per pair
    per_pair = terms[earlier].mean(axis=(0, 1))                  # [d/2]
    shares.append(per_pair / per_pair.sum())
    h = decoder_layer(h, layer, cfg, keep=tokens > cfg.pad_token, index=i)
shares = np.array(shares)                                        # [L, d/2]
print("pair:        ", " ".join(f"{i:>6}" for i in range(d // 2)))
print("wavelength:  ", " ".join(f"{w:>6.0f}" for w in pair_wavelength))
for i, row in enumerate(shares):
    print(f"layer {i:>2} share", " ".join(f"{v:>6.1%}" for v in row))
top = int(shares.mean(0).argmax())
print(f"over all layers, pair {top} (one turn per {pair_wavelength[top]:.0f} tokens; the model's "
      f"context: {cfg.sequence_len} tokens) carries the most: {shares[:, top].mean():.1%} of "
      f"|q.k|, against {1 / (d // 2):.1%} each if spread evenly; the fastest pair carries "
      f"{shares[:, 0].mean():.1%}, the slowest {shares[:, -1].mean():.1%}")

# %% [markdown]
# ## A picture of the frequencies
# Left: $\cos\theta_i(p)$ for every pair $i$ of a Grok-1 head ($d = 128$) over the first
# 256 positions; fast pairs stripe, slow ones barely move. Middle: the wavelength
# $2\pi / \text{base}^{-2i/d}$ of each pair, against the 8192-token context. Right: the
# checkpoint's share of the scores per pair, from the cell above.

# %%
D = C.GROK1.key_size
grid = np.cos(rope_angles(np.arange(256), D)[:, :D // 2])          # [256, 64]
wavelength = 2 * np.pi * BASE ** (np.arange(0, D, 2) / D)
fig, axes = C.plt.subplots(1, 3, figsize=(13, 3.4))
im = axes[0].imshow(grid.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
axes[0].set_xlabel("position p")
axes[0].set_ylabel("pair i")
axes[0].set_title(f"cos(theta_i(p)), d = {D}")
fig.colorbar(im, ax=axes[0])
axes[1].semilogy(wavelength, ".")
axes[1].axhline(C.GROK1.sequence_len, color="gray", ls="--", label="context: 8192 tokens")
axes[1].set_xlabel("pair i")
axes[1].set_ylabel("tokens per full turn")
axes[1].set_title(f"RoPE wavelengths, d = {D}")
axes[1].legend()
for i, row in enumerate(shares):
    axes[2].semilogx(pair_wavelength, row, "o-", ms=3, label=f"layer {i}")
axes[2].axhline(1 / (d // 2), color="gray", ls="--", label="spread evenly")
axes[2].axvline(cfg.sequence_len, color="gray", ls=":", label=f"context: {cfg.sequence_len}")
axes[2].set_xlabel("wavelength of the pair (tokens)")
axes[2].set_ylabel("share of |q.k|")
axes[2].set_ylim(bottom=0)
axes[2].set_title(f"this checkpoint's pairs (d = {d})")
axes[2].legend(fontsize=7, ncol=2)
fig.tight_layout()
C.save_figure(fig, "rope_frequencies")
print(f"wavelengths from {wavelength[0]:.2f} to {wavelength[-1]:,.0f} tokens; "
      f"{int((wavelength > C.GROK1.sequence_len).sum())} of {D // 2} pairs never complete a turn "
      "in the context")

# %% [markdown]
# ## Rotate-half is not interleaved
# The same weights give different rotations in the two layouts. Both are valid RoPEs, but
# only one is Grok-1's: a port that picks the other still attends sensibly and is wrong.

# %%
def interleaved(x, positions):      # the other layout, for comparison only
    a = rope_angles(positions, x.shape[-1])[:, None, : x.shape[-1] // 2]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * np.cos(a) - x[..., 1::2] * np.sin(a)
    out[..., 1::2] = x[..., 0::2] * np.sin(a) + x[..., 1::2] * np.cos(a)
    return out


diff = np.abs(apply_rope(qh, np.arange(len(tokens))) - interleaved(qh, np.arange(len(tokens))))
print(f"rotate-half vs interleaved on layer 0's queries: max |difference| {diff.max():.3f} "
      f"(queries have rms {np.sqrt((qh ** 2).mean()):.3f})")

# %% [markdown]
# ## Try this
# - Change `BASE` to 500000 (as some later models do) in `rope_angles(..., base=...)`: how
#   do the wavelengths move?
# - Check that q.k depends only on m - n also for the interleaved layout.
# - Exercise: `python -m minigrok exercises check rope`.
#
# ## On the real model

# %%
H, K, L = C.GROK1.num_q_heads, C.GROK1.num_kv_heads, C.GROK1.num_layers
flops = L * (H + K) * D * 3
print(f"RoPE rotates {H} query + {K} key heads of {D} per layer: ~{C.fmt_count(flops)} FLOPs "
      f"per token over {L} layers, no weights at all")
print("the keys are stored in the KV cache already rotated, so a cached key is never rotated again")
