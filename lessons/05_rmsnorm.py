# %% [markdown]
# # Lesson 05: RMSNorm and the sandwich
#
# **Goal.** Compute Grok-1's only normalisation, and see why it sits on *both* sides of
# every block: the "sandwich" that keeps the residual stream in check.
#
# **The idea.** For one token $x \in \mathbb{R}^D$:
#
# $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{D}\sum_i x_i^2 + \epsilon}} \odot s,
#   \qquad \epsilon = 10^{-5}.$$
#
# No mean is subtracted (that would be LayerNorm), and the learned scale $s$ multiplies
# directly (some models store $1 + s$ instead). Computed in float32 whatever the activations.
# Because the denominator is the size of $x$ itself, RMSNorm is (almost exactly)
# *scale-invariant*: $\mathrm{RMSNorm}(c\,x) = \mathrm{RMSNorm}(x)$ for any $c > 0$ as long as
# $\tfrac1D\sum x_i^2 \gg \epsilon$. Lesson 13 shows a bug this property hides.
#
# Grok-1 normalises four times per layer, named in creation order:
#
# $$h \leftarrow h + \mathrm{rms\_norm\_1}(\mathrm{attn}(\mathrm{rms\_norm}(h))), \qquad
#   h \leftarrow h + \mathrm{rms\_norm\_3}(\mathrm{moe}(\mathrm{rms\_norm\_2}(h))).$$
#
# The usual *pre*-norms feed each block a unit-size input; the *post*-norms rms_norm_1 and
# rms_norm_3 set the size of what each block adds to the stream, whatever the block
# computed. The update's rms is about the rms of the post-norm's scale.
#
# **The code.** `minigrok/reference/rmsnorm.py`: `rms_norm`; `minigrok/reference/layer.py`: `decoder_layer`.

# %%
import _common as C
import numpy as np
from minigrok.reference.layer import decoder_layer
from minigrok.reference.model import embed
from minigrok.reference.rmsnorm import EPS, rms_norm

args = C.setup(5, "RMSNorm and the sandwich")
rng = np.random.default_rng(5)

# %% [markdown]
# ## RMSNorm on a few vectors

# %%
x = rng.standard_normal((3, 8)).astype(np.float32) * np.array([[0.01], [1], [100]], np.float32)
ones = np.ones(8, np.float32)
y = rms_norm(x, ones)
C.peek("x (rows of rms 0.01, 1, 100)", x)
C.peek("rms_norm(x, 1)", y)
print("rms of each output row:", np.sqrt((y ** 2).mean(-1)), " (eps =", EPS, ")")
print("scale-invariant: max |rms_norm(7 x) - rms_norm(x)| per row =",
      np.abs(rms_norm(7 * x, ones) - y).max(-1), "(row 0: mean(x^2) = "
      f"{float((x[0] ** 2).mean()):.1e} is not >> eps)")
tiny = np.full((1, 8), 1e-3, np.float32)
print(f"but not when mean(x^2) ~ eps: rms_norm(1e-3) = {rms_norm(tiny, ones)[0, 0]:.4f}, "
      f"rms_norm(1e-2) = {rms_norm(10 * tiny, ones)[0, 0]:.4f}")

# %% [markdown]
# ## The sandwich in the model
# Run the decoder layers one by one and watch the residual stream $h$: its rms, and the rms
# of what each layer adds. The post-norm scales of this checkpoint are printed next to it.

# %%
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
keep = tokens > cfg.pad_token
h = embed(params, cfg, tokens)
stream, update, post = [float(np.sqrt((h ** 2).mean()))], [], []
for i, layer in enumerate(params["layers"]):
    new = decoder_layer(h, layer, cfg, keep=keep, index=i)
    update.append(float(np.sqrt(((new - h) ** 2).mean())))
    stream.append(float(np.sqrt((new ** 2).mean())))
    post.append([float(np.sqrt(np.mean(np.asarray(layer[n]) ** 2))) for n in ("rms_norm_1", "rms_norm_3")])
    h = new
print("layer  rms(h after)  rms(update)  rms(rms_norm_1 scale)  rms(rms_norm_3 scale)")
for i in range(cfg.num_layers):
    print(f"{i:>5}  {stream[i + 1]:>12.4f}  {update[i]:>11.4f}  {post[i][0]:>21.4f}  {post[i][1]:>21.4f}")
C.peek("final_norm(h)", rms_norm(h, params["rms_norm"]))

fig, ax = C.plt.subplots(figsize=(6.4, 3.4))
ax.plot(range(cfg.num_layers + 1), stream, "o-", label="rms of the residual stream h")
ax.plot(range(1, cfg.num_layers + 1), update, "s-", label="rms of the layer's update")
ax.plot(range(1, cfg.num_layers + 1), [np.hypot(*p) for p in post], "--", color="gray",
        label="sqrt(rms(s1)^2 + rms(s3)^2) of the post-norm scales")
ax.set_xlabel("after layer (0 = the embeddings)")
ax.set_ylabel("rms")
ax.set_ylim(bottom=0)
ax.set_title("The sandwich norms set the size of every update")
ax.legend(fontsize=8)
fig.tight_layout()
C.save_figure(fig, "residual_stream")

# %% [markdown]
# ## Try this
# - Multiply one layer's `rms_norm_3` scale by 10 (a copy of `params`) and rerun: which
#   rows of the table change, and by how much?
# - Replace `rms_norm` by LayerNorm (subtract the mean first) in a copy of the cell above:
#   does the final output move much on this checkpoint?
# - Exercise: `python -m minigrok exercises check rmsnorm`.
#
# ## On the real model
# Norms are the cheapest step of all.

# %%
D, L = C.GROK1.emb_size, C.GROK1.num_layers
print(f"{4 * L + 1} RMSNorms, each {D} float32 scales: {C.fmt_bytes((4 * L + 1) * D * 4)} in all")
from minigrok.formats.checkpoint import active_int8_bytes

print(f"per token: about {C.fmt_count((4 * L + 1) * 4 * D)} FLOPs for all norms, against "
      f"~{C.fmt_count(2 * active_int8_bytes(C.GROK1))} for the weight matrix products (lesson 11)")
