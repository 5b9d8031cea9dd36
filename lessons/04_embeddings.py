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
# (rms about $1/\sqrt{D}$ when initialised; training moves them a little, as printed below)
# while the residual stream starts at rms about 1; the second
# tempers the logits. A port that forgets either still runs, and is wrong everywhere.
#
# **The code.** `minigrok/reference/model.py`: `embed(params, cfg, tokens)` and
# `unembed(params, cfg, h)`; the constants are fields of `minigrok/reference/config.py`'s `Config`.

# %%
import _common as C
import numpy as np
from minigrok.reference.model import embed, forward, unembed
from minigrok.reference.rmsnorm import rms_norm
from minigrok.training import stories

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
# hidden vector with row $v$ of $E$. Feed each token's own (normalised) embedding straight
# into `unembed`: its score for token $v$ is roughly proportional to $|E_v| \cos(E_t, E_v)$
# (the final norm's gains aside), so the token itself (cosine 1) wins unless another row is
# both close in direction and longer.
#
# On random weights that says nothing: random rows in $D$ dimensions are nearly orthogonal,
# so the token wins by a wide margin over a runner-up that is merely the largest of many
# chance overlaps, whatever the tokens mean. On the trained rows the token can still win
# (the share is printed), but the runner-up is no longer arbitrary: mostly a word of the
# same kind, because training put such words in nearly the same direction (section after
# next), or else the one long row that all unseen ids share.

# %%
final_norm = params["rms_norm"]
logits = unembed(params, cfg, rms_norm(h0, final_norm))
print("logits:", logits.dtype, list(logits.shape))
sp = C.tokenizer_or_none(model)
name = (lambda i: sp.id_to_piece(int(i))) if sp else (lambda i: str(int(i)))
UNSEEN = 35175                        # "▁中": no story uses it (see "What the trained rows learned")
Ef = np.asarray(E, dtype=np.float32)
shared = Ef[UNSEEN % cfg.vocab_size]
own = logits[np.arange(len(tokens)), tokens]
rank = (logits > own[:, None]).sum(-1)                  # 0: the token itself scores highest
print(f"{np.mean(rank == 0):.0%} of the story's tokens rank themselves first "
      f"(median rank {np.median(rank):.0f})")
rival = logits.copy()
rival[np.arange(len(tokens)), tokens] = -np.inf
second = rival.argmax(-1)
margin = own - rival.max(-1)
_, first_seen = np.unique(tokens, return_index=True)
for t in sorted(first_seen, key=lambda t: margin[t])[:5]:      # the closest calls
    unseen = " (an unseen id: they all share one row)" if np.all(Ef[second[t]] == shared) else ""
    print(f"  {name(tokens[t]):>8}: own logit {own[t]:6.2f}, runner-up {name(second[t])!r} "
          f"{own[t] - margin[t]:.2f}{unseen}")
first = np.array(E[:4096], dtype=np.float32)                     # the first 4096 rows
without = rms_norm(h0, final_norm) @ first.T
print("logits = (h @ E.T) * output_multiplier_scale (first 4096 columns):",
      np.allclose(logits[:, :4096], without * np.float32(cfg.output_multiplier_scale), rtol=1e-5, atol=1e-5))

# %% [markdown]
# Tying therefore means: a final hidden vector that points along a token's row predicts that
# token. The model's job is the *next* token, so its layers must carry every position away
# from its own row. Random layers only add vectors in random directions, which leave the own
# row the best match: a random model's real output (lesson 11's forward pass) echoes its
# input. The trained layers turn each position toward the next token's row instead.

# %%
trace = {}
real = forward(params, cfg, tokens, trace=trace)                        # [T, V]
out = real.argmax(-1)
print(f"after all {cfg.num_layers} layers the top token is the position's own token at "
      f"{np.mean(out == tokens):.0%} of positions, the next token of the story at "
      f"{np.mean(out[:-1] == tokens[1:]):.0%}")

# %% [markdown]
# ## What the trained rows learned
# The built-in model trained only over the token ids its stories use; every other id of the
# 131,072 shares one row. That row is the row of any id no story uses, such as "▁中" (a CJK
# token), so the trained ids are the rows that differ from it. (On random weights every row
# differs.)

# %%
trained = np.flatnonzero(np.any(Ef != shared, axis=1))
if len(trained) == cfg.vocab_size - 1:
    print(f"no other id shares the row of id {UNSEEN}: every row is its own (random weights?)")
else:
    print(f"{cfg.vocab_size - len(trained):,} ids share the row of id {UNSEEN}; "
          f"{len(trained):,} ids have a row of their own")
norms = np.linalg.norm(Ef[trained], axis=1)
print(f"norm of the own rows: median {np.median(norms):.2f} (from {norms.min():.2f} to "
      f"{norms.max():.2f}); the shared row: {np.linalg.norm(shared):.2f}, "
      f"{np.linalg.norm(shared) / np.median(norms):.1f}x the median")

# %% [markdown]
# The shared row was trained for one thing only: since its logit is the logit of every
# unseen id, it must stay low wherever the model is. With tied weights that takes a row
# pointing away from the final hidden vectors (a negative cosine with each of them), and a
# longer row pushes its logit further down. On random weights the cosine is near 0.

# %%
hn = trace["final_norm"]                                                # [T, D]
cos = hn @ shared / np.linalg.norm(hn, axis=1) / np.linalg.norm(shared)
print(f"cosine of the shared row with the final hidden vectors: mean {cos.mean():+.2f} "
      f"(from {cos.min():+.2f} to {cos.max():+.2f})")
if len(trained) < cfg.vocab_size - 1:
    gap = real.max(-1) - real[:, UNSEEN % cfg.vocab_size]
    norm = np.exp(real - real.max(-1, keepdims=True)).sum(-1)
    mass = (cfg.vocab_size - len(trained)) * np.exp(-gap) / norm      # all the unseen ids
    print(f"each unseen id's logit is {np.median(gap):.1f} below the top one (median over the "
          f"story), so all of them together get {mass.mean():.2%} of the probability")

# %% [markdown]
# Nearest rows by cosine, among the ids with a row of their own. Training pulls together
# words that can stand in the same place of a story, so names sit near names, colours near
# colours and toys near toys. On random weights the nearest rows are unrelated tokens from
# all over the vocabulary: the largest of many chance overlaps.

# %%
U = Ef[trained] / norms[:, None]                                    # unit rows [N, D]
names = set(stories.GIRLS + stories.BOYS + stories.PET_NAMES)
story = dict(zip(C.PIECES, C.TOKENS))                               # piece -> id
kinds = {story["▁Mia"]: ("names", names), story["▁red"]: ("colours", set(stories.COLORS)),
         story["▁ball"]: ("toys", set(stories.TOYS + stories.GIFTS)),
         story["▁One"]: ("capitalised non-names", None)}


def kind_of(ids, words):
    """Which of ``ids`` are one-token words of ``words`` (None: capitalised, not a name)."""
    pieces = [sp.id_to_piece(int(i)).lstrip("▁") for i in ids]
    if words is None:
        return np.array([p[:1].isupper() and p not in names for p in pieces])
    return np.array([p in words for p in pieces])


for query, (kind, words) in kinds.items():
    q = query % cfg.vocab_size
    sim = U @ (Ef[q] / np.linalg.norm(Ef[q]))
    near = trained[np.argsort(-sim)[1:9]]                          # [0] is the query itself
    print(f"{name(q)!r:>8}: " + ", ".join(f"{name(i)} {s:.2f}" for i, s in
                                           zip(near, np.sort(-sim)[1:9] * -1)))
    if sp:
        print(f"{'':>10}{kind_of(near, words).sum()} of its 8 nearest rows are {kind} "
              f"({kind_of(trained, words).mean():.1%} of the ids with a row of their own are)")

# %% [markdown]
# ## Try this
# - Skip `embedding_multiplier_scale` (use `E[tokens]` as $h_0$) and run lesson 11's
#   forward pass by hand: how far do the logits move?
# - Find the two ids whose rows are most alike (cosine similarity) among `trained`. Then run
#   this lesson with `--checkpoint` on a random model (`python -m minigrok make-checkpoint
#   --preset tiny --out /tmp/tiny`): do its nearest rows have anything in common?
# - Query the neighbours of a number word (`sp.piece_to_id("▁three")`) or of " she".
# - Exercise `embed_unembed`: the lookup and the tied unembedding with their two
#   multipliers: `python -m minigrok exercises check embed_unembed`.
#
# ## On the real model

# %%
V, D = C.GROK1.vocab_size, C.GROK1.emb_size
print(f"E is {V} x {D} float32 = {C.fmt_bytes(V * D * 4)}, the only large float32 matrix of the model")
print(f"looking up a token reads one row: {C.fmt_bytes(D * 4)}")
print(f"the logits of one position read all of E and cost 2 V D = {C.fmt_count(2 * V * D)} FLOPs")
C.estimate("time to stream E once at 20 GB/s (assumed RAM bandwidth)", f"{V * D * 4 / 20e9 * 1e3:.0f} ms")
