# %% [markdown]
# # Lesson 04: embeddings and the two multipliers
#
# **Goal.** Turn token ids into vectors at the bottom of the model and vectors back into
# one score per vocabulary entry at the top, with Grok-1's single shared matrix and its two
# constants.
#
# **The idea.** The embedding matrix $E$ [V, D] has one row per token. Grok-1 uses it twice
# (*tied* embeddings):
#
# $$h_0 = E[\text{tokens}] \cdot \text{embedding\_multiplier\_scale}, \qquad
#   \text{logits} = \mathrm{RMSNorm}(h_L)\, E^\top \cdot \text{output\_multiplier\_scale}.$$
#
# In Grok-1 `embedding_multiplier_scale` $= \sqrt{6144} = 78.38$ and
# `output_multiplier_scale` $= 1/\sqrt{3} = 0.577$. The first lets the stored rows be small
# (rms about $1/\sqrt{D}$) while the residual stream starts at rms about 1; the second
# tempers the logits. A port that forgets either still runs, and is wrong everywhere.
#
# **The code.** `minigrok/reference/model.py`: `embed(params, cfg, tokens)` and
# `unembed(params, cfg, h)`; the constants are fields of `minigrok/reference/config.py`'s `Config`.

# %%
import _common as C
import numpy as np
from minigrok.reference.model import embed, unembed
from minigrok.reference.rmsnorm import rms_norm

args = C.setup(4, "embeddings and the two multipliers")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
E = params["in_out_embed"]
print(f"E: {E.dtype} {list(E.shape)} (V = {cfg.vocab_size}, D = {cfg.emb_size})")
print(f"embedding_multiplier_scale = {cfg.embedding_multiplier_scale:.6g} "
      f"(sqrt(D) = {np.sqrt(cfg.emb_size):.6g})")
print(f"output_multiplier_scale    = {cfg.output_multiplier_scale:.6g} (1/sqrt(3) = {1 / np.sqrt(3):.6g})")

# %% [markdown]
# ## Looking tokens up
# `embed` is a row lookup and one multiplication. Only the rows of the prompt's tokens are
# ever read: with a memory-mapped checkpoint, the rest of $E$ stays on disk.

# %%
rows = np.asarray(E[tokens])
h0 = embed(params, cfg, tokens)
C.peek("E[tokens]", rows)
C.peek("embed(tokens) = h0", h0)
print("h0 == E[tokens] * multiplier:",
      np.allclose(h0, rows * np.float32(cfg.embedding_multiplier_scale)))
print("rms of each token's h0:", np.sqrt((h0 ** 2).mean(-1)))

# %% [markdown]
# ## Scores for every token
# `unembed` multiplies by $E^\top$: the logit of token $v$ is the dot product of the final
# hidden vector with row $v$ of $E$. So a hidden vector pointing along a token's own row
# gives that token the top score: feed each token's (normalised) embedding straight into
# `unembed` and see which token wins.

# %%
final_norm = params["rms_norm"]
logits = unembed(params, cfg, rms_norm(h0, final_norm))
print("logits:", logits.dtype, list(logits.shape))
top = logits.argmax(-1)
print("tokens:       ", tokens.tolist())
print("argmax logits:", top.tolist())
print(f"{np.mean(top == tokens):.0%} of tokens rank themselves first (tied embeddings)")
first = np.array(E[:4096], dtype=np.float32)                     # the first 4096 rows
without = rms_norm(h0, final_norm) @ first.T
print("logits = (h @ E.T) * output_multiplier_scale (first 4096 columns):",
      np.allclose(logits[:, :4096], without * np.float32(cfg.output_multiplier_scale), rtol=1e-5, atol=1e-5))

# %% [markdown]
# ## Try this
# - Skip `embedding_multiplier_scale` (use `E[tokens]` as $h_0$) and run lesson 11's
#   forward pass by hand: how far do the logits move?
# - Find the two tokens whose embedding rows are most alike (cosine similarity) among the
#   first 1000 ids. On the tiny checkpoint the answer is noise; on the real one it is not.
#
# ## On the real model

# %%
V, D = C.GROK1.vocab_size, C.GROK1.emb_size
print(f"E is {V} x {D} float32 = {C.fmt_bytes(V * D * 4)}, the only large float32 matrix of the model")
print(f"looking up a token reads one row: {C.fmt_bytes(D * 4)}")
print(f"the logits of one position read all of E and cost 2 V D = {C.fmt_count(2 * V * D)} FLOPs")
C.estimate("time to stream E once at 20 GB/s (assumed RAM bandwidth)", f"{V * D * 4 / 20e9 * 1e3:.0f} ms")
