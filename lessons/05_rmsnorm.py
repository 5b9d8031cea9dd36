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
# computed: a normalised vector has unit rms, so the update $\hat a \odot s$ has rms about
# $\mathrm{rms}(s)$, exactly so when the features' sizes are unrelated to the scale's.
#
# **The code.** `minigrok/reference/rmsnorm.py`: `rms_norm`; `minigrok/reference/layer.py`: `decoder_layer`.

# %%
import _common as C
import numpy as np
from minigrok.reference.attention import attention
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
# of what each block adds (the attention's update $\mathrm{rms\_norm\_1}(a)$, computed by
# hand as in lesson 10, and the MoE's, the rest of what `decoder_layer` adds), next to the
# rms of the post-norm scale that sized it. minigrok's training starts every norm scale at 1
# and learns it; `make-checkpoint` centres a random checkpoint's post-norm scales at 0.1
# instead, so there every block adds about 0.1 to a stream of rms about 1, which hardly
# grows over 12 layers.

# %%
def rms(v):
    return float(np.sqrt(np.mean(np.asarray(v, np.float64) ** 2)))


model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
keep = tokens > cfg.pad_token
h = embed(params, cfg, tokens)
stream, rows, cosines = [rms(h)], [], []
for i, layer in enumerate(params["layers"]):
    a = attention(rms_norm(h, layer["rms_norm"]), **layer["multi_head_attention"],
                  num_q_heads=cfg.num_q_heads, num_kv_heads=cfg.num_kv_heads,
                  key_size=cfg.key_size, multiplier=cfg.attn_output_multiplier, keep=keep)
    u_attn = rms_norm(a, layer["rms_norm_1"])
    new = decoder_layer(h, layer, cfg, keep=keep, index=i)
    u_moe = new - h - u_attn                     # = rms_norm_3(moe(...)), up to rounding
    s1, s3 = rms(layer["rms_norm_1"]), rms(layer["rms_norm_3"])
    rows.append((rms(u_attn), s1, rms(u_moe), s3, rms(new - h), float(np.hypot(s1, s3))))
    cosines.append(float((u_attn * u_moe).sum() / np.linalg.norm(u_attn) / np.linalg.norm(u_moe)))
    stream.append(rms(new))
    h = new
print("layer  rms(h after)  attention: update  rms(s1)   MoE: update  rms(s3)   "
      "both: update  hypot(s1, s3)")
for i, r in enumerate(rows):
    print(f"{i:>5}  {stream[i + 1]:>12.4f}  {r[0]:>17.4f}  {r[1]:>7.4f}  {r[2]:>12.4f}  "
          f"{r[3]:>7.4f}  {r[4]:>12.4f}  {r[5]:>13.4f}")
C.peek("final_norm(h)", rms_norm(h, params["rms_norm"]))
rows = np.array(rows)                                                # [L, 6]
block_gap = np.abs(rows[:, [0, 2]] / rows[:, [1, 3]] - 1).max()
both_gap = np.abs(rows[:, 4] / rows[:, 5] - 1).max()
print(f"each block's update has the rms of its post-norm scale to within {block_gap:.1%} "
      f"(the worst of {2 * cfg.num_layers} blocks)")
print(f"both updates of a layer: within {both_gap:.1%} of hypot(rms(s1), rms(s3)), the size two "
      f"orthogonal updates would have (their cosines: {min(cosines):+.2f} to {max(cosines):+.2f})")
print(f"the stream's rms goes from {stream[0]:.2f} (the embeddings) to {stream[-1]:.2f} after "
      f"{cfg.num_layers} layers: each layer adds an update of rms {rows[:, 4].mean():.2f} on "
      f"average, {np.mean(rows[:, 4] / np.array(stream[:-1])):.0%} of the stream it joins")

fig, ax = C.plt.subplots(figsize=(6.4, 3.4))
after = range(1, cfg.num_layers + 1)
ax.plot(range(cfg.num_layers + 1), stream, "o-", color="tab:blue",
        label="rms of the residual stream h")
# The updates are open markers only and the scales dotted lines through them: where a line
# passes through its markers, the claim holds. (A solid line for the updates hid the
# dotted one beneath it wherever the two coincide, which is everywhere.)
ax.plot(after, rows[:, 0], "s", color="tab:orange", ms=9, mfc="none", label="attention's update")
ax.plot(after, rows[:, 1], "x:", color="saddlebrown", lw=1.5, label="rms(rms_norm_1 scale)")
ax.plot(after, rows[:, 2], "^", color="tab:green", ms=9, mfc="none", label="MoE's update")
ax.plot(after, rows[:, 3], "x:", color="darkgreen", lw=1.5, label="rms(rms_norm_3 scale)")
ax.set_xticks(range(cfg.num_layers + 1))
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
