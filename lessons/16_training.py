# %% [markdown]
# # Lesson 16: Training a small Grok-1
#
# **Goal.** See how the built-in model learned to tell stories: the backward pass of each
# Grok-1 component, checked against finite differences; the loss it minimises over the full
# 131,072-token vocabulary; its loss curve; and how its float32 weights became the int8
# release format the rest of the course reads.
#
# **The idea.** Training is gradient descent on the cross-entropy of the next token,
#
# $$\mathcal{L} = -\frac{1}{N}\sum_{n} \log p_\theta(t_{n+1} \mid t_{\le n}),$$
#
# and the gradient $\partial\mathcal{L}/\partial\theta$ comes from running the forward pass
# backwards, one component at a time (the chain rule). Every component of lessons 04-11 has
# a backward: RMSNorm, RoPE, soft-capped attention, the router and its top-2 gates, the
# tanh-GELU experts, the sandwich norms, the tied (un)embedding with its two multipliers.
# A backward is only trusted once it agrees with finite differences,
# $\frac{\mathcal{L}(\theta + \varepsilon u) - \mathcal{L}(\theta - \varepsilon u)}{2\varepsilon}
# \approx \nabla\mathcal{L}\cdot u$.
#
# The training code is a *client* of the reference, like the engine: it never changes the
# model's math, and the tests hold its forward to `reference/model.forward` on the same
# weights.
#
# **The code.** `minigrok/training/`: `gradients.py` (each component's backward),
# `network.py` (the whole model's loss and gradient), `adamw.py`, `stories.py` (the corpus),
# `trainer.py` (`python -m minigrok train`), `release.py` (into int8).

# %%
import json
import random

import _common as C
import numpy as np
from minigrok.api import BUILTIN
from minigrok.formats import compact
from minigrok.reference.quant import dequantize, quantize
from minigrok.training import gradients as gr
from minigrok.training import stories
from minigrok.training.network import log_softmax_full

args = C.setup(16, "Training a small Grok-1")
rng = np.random.default_rng(16)

# %% [markdown]
# ## The corpus
# A program in the repository writes the stories (so they are license-clean and need no
# download): simple plots with characters whose names are drawn at random from 176, so the
# only way to predict a name's second mention is to copy it from the first. Two stories in
# five have a "memory game", a list of random words said and then said back.

# %%
story = stories.story(random.Random("lesson 16"))
print(story)
print(f"\nlexicon: {len(stories.words())} words; this story: {len(stories.split_words(story))} words")

# %% [markdown]
# ## The backward of RMSNorm, and how far to trust a finite difference
# $y = x\,r\,s$ with $r = (\overline{x^2} + \epsilon)^{-1/2}$. Since
# $\partial r/\partial x_j = -r^3 x_j / D$, the gradient is
# $\partial\mathcal{L}/\partial x = r\,(g s - \hat{x}\,\overline{g s \hat{x}})$ with
# $\hat x = x r$: the incoming gradient, scaled, minus its component along $x$ (a norm cannot
# change the size of its output, so no gradient can usefully push along $x$).
#
# The finite difference has two errors pulling in opposite directions: truncation,
# $O(\varepsilon^2)$, and rounding, $O(u_{\text{machine}}/\varepsilon)$. Their sum is smallest
# near $\varepsilon \approx u^{1/3}$: about 1e-5 in float64, 1e-2 in float32, which is why the
# gradient checks in `tests/test_training.py` run in float64.
#
# Below, the loss's sums are added left to right (`in_order`). numpy's own sums add in an
# order that depends on the CPU's vector width (AVX2 or AVX-512), which moves their last
# bits, and the rounding half of this figure with them: in order, the figure is the same on
# every machine. The forward is `gradients.rms_norm_forward`'s formula, checked against it.

# %%
def in_order(a):
    """The sum of a 1-D array, added left to right (np.cumsum adds one element at a time)."""
    return np.cumsum(a)[-1]


x, s, g = rng.standard_normal(16), 1 + 0.1 * rng.standard_normal(16), rng.standard_normal(16)
y, cache = gr.rms_norm_forward(x, s)
dx, ds = gr.rms_norm_backward(g, s, cache)
u = rng.standard_normal(16)
analytic = float(in_order(dx * u))
print(f"analytic directional derivative: {analytic:.12f}")
eps_grid = np.logspace(-12, -1, 23)
errors = {}
for dtype in (np.float64, np.float32):
    xd, sd, gd, ud = (a.astype(dtype) for a in (x, s, g, u))

    def loss(z):
        r = dtype(1) / np.sqrt(in_order(z * z) / dtype(len(z)) + dtype(gr.EPS))
        return float(in_order(z * r * sd * gd))

    # the same forward as the training code's, up to the order of its sums
    assert abs(loss(xd) - float((gr.rms_norm_forward(xd, sd)[0] * gd).sum())) <= \
        64 * np.finfo(dtype).eps * float(np.abs(gr.rms_norm_forward(xd, sd)[0] * gd).sum())

    errors[dtype] = [abs((loss(xd + dtype(e) * ud) - loss(xd - dtype(e) * ud)) / (2 * e) - analytic)
                     for e in eps_grid]
    best = int(np.argmin(errors[dtype]))
    print(f"{np.dtype(dtype).name}: best eps {eps_grid[best]:.0e}, error {errors[dtype][best]:.1e}")

fig, ax = C.plt.subplots(figsize=(6.4, 3.4))
for dtype, style in ((np.float64, "o-"), (np.float32, "s-")):
    ax.loglog(eps_grid, np.maximum(errors[dtype], 1e-17), style, ms=3, label=np.dtype(dtype).name)
ax.set_xlabel("finite-difference step eps")
ax.set_ylabel("|finite difference - backward|")
ax.set_title("RMSNorm's backward against central differences")
ax.legend()
fig.tight_layout()
C.save_figure(fig, "gradient_check")

# %% [markdown]
# ## The soft cap passes less gradient where it bends
# Attention scores are capped to $30\tanh(s/30)$ (lesson 07), whose derivative is
# $1 - \tanh^2(s/30)$: 1 for small scores, 0.42 at $s = 30$, 0.07 at $s = 60$. A score that
# has grown far past the cap stops receiving gradient; the cap bounds what training can do
# to one score, as well as the score itself. `attention_backward` multiplies by exactly this
# factor after the softmax's own backward $p\,(dp - \sum p\,dp)$.

# %%
for score in (1.0, 10.0, 30.0, 60.0, 90.0):
    print(f"s = {score:5.1f}: capped {30 * np.tanh(score / 30):6.2f}, "
          f"d(cap)/ds = {1 - np.tanh(score / 30) ** 2:.3f}")

# %% [markdown]
# ## The router learns only through its gates
# The top-2 choice is a step function: moving the router weights a little either keeps the
# same two experts (gradient 0 through the choice) or jumps. What does have a gradient is the
# *value* of each chosen gate, a softmax probability. Left alone, a router tends to send most
# tokens to a few experts, which then get better and attract still more tokens. The trainer
# adds Switch Transformer's load-balancing loss, $E\sum_e f_e P_e$, a *training* choice: the
# released inference code has no trace of it, and the trained model's forward is unchanged.

# %%
probs = np.exp(rng.standard_normal((512, 8)) * 2)
probs /= probs.sum(-1, keepdims=True)
ids = gr.top_k(probs, 2)
print(f"balance loss of random routing: {gr.balance_loss(probs, ids, 8)[0]:.3f} "
      "(1.0 = perfectly even, 8.0 = one expert takes all)")
skewed = probs.copy()
skewed[:, 0] += 2
skewed /= skewed.sum(-1, keepdims=True)
print(f"balance loss when expert 0 is favoured: "
      f"{gr.balance_loss(skewed, gr.top_k(skewed, 2), 8)[0]:.3f}")

# %% [markdown]
# ## 131,072 tokens, trained over about 1,300
# The stories use about 1,300 distinct token ids. The model trains over those, plus *one*
# more embedding row shared by all the other ~129,800 ids. Sharing one row means they all
# get the same logit $z_o$, so the full softmax's denominator is
# $\sum_{\text{seen}} e^{z_i} + n_o e^{z_o}$: the reduced softmax with the shared logit
# raised by $\log n_o$. The loss is exactly the full-vocabulary cross-entropy, and the shipped
# model, whose 131,072 rows are the trained rows with the shared one repeated, has the
# trained distribution over every id.

# %%
logits = rng.standard_normal((1, 5))
n_other = 129_800
reduced = log_softmax_full(logits, n_other)[0]
full = np.concatenate([logits[0, :4], np.repeat(logits[0, 4], n_other)])
full_logp = full - np.log(np.exp(full - full.max()).sum()) - full.max()
print("reduced:", reduced)
print("full   :", full_logp[:5], " (the same numbers)")

# %% [markdown]
# ## The run that made the built-in model
# `python -m minigrok train --out run/` runs the recipe in `minigrok/training/recipe.py`
# (AdamW, warm-up then cosine, batches of 16 windows of 256 tokens) and writes `loss.csv`,
# `loss.png`, a resumable `state.npz`, and the model. The curve below is that run's, as
# committed beside the model.

# %%
report = json.loads(BUILTIN.with_suffix(".json").read_text())
curve = np.genfromtxt(BUILTIN.with_name("storyteller-loss.csv"), delimiter=",", names=True)
print(f"{report['steps']} steps, {report['tokens']:,} tokens, {report['seconds'] / 60:.0f} min "
      f"on 2 CPU cores ({report['tokens_per_second']:,.0f} tokens/s)")
print(f"held-out loss {report['heldout_loss']:.3f} nats/token; unigram baseline "
      f"{report['unigram_loss']:.3f}")
fig, ax = C.plt.subplots(figsize=(6.4, 3.4))
ax.plot(curve["step"], curve["train_loss"], lw=0.8, label="training batch")
held = ~np.isnan(curve["heldout_loss"])
ax.plot(curve["step"][held], curve["heldout_loss"][held], "o-", ms=3, label="held-out stories")
ax.axhline(report["unigram_loss"], ls="--", color="gray", label="unigram baseline")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats/token)")
ax.set_title("Training the built-in model")
ax.legend()
fig.tight_layout()
C.save_figure(fig, "loss_curve")

# %% [markdown]
# ## Into the release format
# Training ends in float32; the release format stores every matrix as int8 with bf16 scales
# (lesson 03), the embeddings, norms and routers as float32. `release.py` quantises each
# matrix exactly as the released weights are laid out, and the trainer measures the held-out
# loss both ways. Quantising is idempotent: the dequantised weights quantise to the same bytes.

# %%
cfg, vocab, tensors = compact.load(BUILTIN)
name = "transformer/decoder_layer_0/moe/linear_1/w"
w = tensors[name]
again = quantize(dequantize(w), w.scales.shape[-2])
print(f"{name}: int8 {list(w.weight.shape)}, scales {list(w.scales.shape)}; "
      f"re-quantised identical: {np.array_equal(again.weight, w.weight) and np.array_equal(again.scales, w.scales)}")
print(f"held-out loss: float32 {report['heldout_loss']:.4f}, int8 as released "
      f"{report['heldout_loss_int8']:.4f} "
      f"({100 * (report['heldout_loss_int8'] / report['heldout_loss'] - 1):+.2f}%)")

# %% [markdown]
# ## What it learned
# The measures of `minigrok/training/measures.py`, on the model as released: copying (a
# random 32-token sequence shown twice; loss on the second copy over the first), the share
# of generated words that are words of the stories, and the probability left for the ids it
# never saw. Then a story, greedy, from the trained weights.

# %%
print(f"copy ratio {report['copy_ratio']:.3f} (random weights: 1.0; a model that copies: "
      "well under 0.5. This one has not learned to copy an arbitrary sequence)")
print(f"dictionary words {100 * report['word_share']:.1f}% of generated words")
print(f"probability of never-seen ids on held-out text: {100 * report['unseen_mass']:.3f}%")
model = C.load(args)
print("".join(model.generate("Once upon a time", max_new_tokens=80)))

# %% [markdown]
# ## Try this
# - Train for 50 steps yourself (`python -m minigrok train --out /tmp/run --steps 50`, about
#   a minute) and generate from `/tmp/run/checkpoint`: what has it learned already?
# - Set the balance loss to 0 in a copy of the recipe: how uneven does the expert load get?
# - Break one backward on purpose (drop the `- xn * mean(...)` term of `rms_norm_backward`)
#   and run `python -m pytest tests/test_training.py`: which checks fail, and by how much?
# - Exercises: write RMSNorm's backward and the soft-capped attention's backward yourself,
#   `python -m minigrok exercises check rmsnorm_backward` and `... check
#   softcap_attention_backward` (stubs in `lessons/exercises/`); both are checked by central
#   finite differences of minigrok's forward, like the cells above.
#
# ## On the real model
# The same backward pass, at Grok-1's size: a training step costs about 6 FLOPs per active
# weight per token (2 forward, 4 backward), and AdamW keeps two moments beside every weight
# and its gradient. Estimates, from the config:

# %%
from minigrok.formats.checkpoint import active_int8_bytes, tensor_specs

total = sum(int(np.prod(s.shape)) for s in tensor_specs(C.GROK1))
active = active_int8_bytes(C.GROK1) + C.GROK1.vocab_size * C.GROK1.emb_size
print(f"weights: {C.fmt_count(total)} in all, ~{C.fmt_count(active)} touched per token")
ours = active_int8_bytes(cfg) + report["vocab_rows"] * cfg.emb_size    # over the trained rows
print(f"per token trained: ~{C.fmt_count(6 * active)} FLOPs (estimate); the built-in model: "
      f"~{C.fmt_count(6 * ours)} FLOPs ({C.fmt_count(ours)} weights touched per token)")
print(f"float32 weights + gradients + two AdamW moments: {C.fmt_bytes(16 * total)} "
      "(estimate; xAI's training setup is not public)")
