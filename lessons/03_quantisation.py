# %% [markdown]
# # Lesson 03: int8 quantisation and block scales
#
# **Goal.** Read Grok-1's weights the way they are stored: one signed byte per weight plus a
# bfloat16 scale per column (or per block of rows and column), and multiply by them without
# ever building the float32 matrix.
#
# **The idea.** Absmax quantisation of a matrix $W$ [in, out]: for each output column $j$,
# $s_j = \max_r |W_{rj}| / 127$ and $q_{rj} = \mathrm{round}(W_{rj} / s_j) \in [-127, 127]$.
# Then $W_{rj} \approx q_{rj} \, s_j$ with an error of at most $s_j / 2$. The scales are
# stored as bfloat16: the top 16 bits of a float32 (8 exponent bits, 7 mantissa bits), so a
# scale itself carries about 3 significant digits.
#
# Two of Grok-1's weights (the attention output `linear` and the expert down-projection
# `linear_1`) were split by *rows* over 8 devices during training, and each device kept its
# own scales: their rows come in $B = 8$ contiguous blocks, and row $r$ of block $b$ is
# $q_r \cdot s_{b}$. A block that happens to hold small weights gets a small scale and keeps
# its precision.
#
# Because a scale multiplies a whole column of its block,
# $x_b (q_b \, s_b) = (x_b \, q_b) \, s_b$: a fast product can multiply by the int8 rows
# (widened a few MB at a time) and scale the small $[T, \text{out}]$ result instead.
#
# **The code.** `minigrok/reference/quant.py`: `quantize`, `dequantize`, `bf16_to_f32`,
# `f32_to_bf16`, and `linear`, the model's product, which is `x @ dequantize(w)`. The
# engine's tiled product is `int8_matmul` in `minigrok/engine/cpu.py` (lesson 15).

# %%
import _common as C
import numpy as np
from minigrok.reference import quant

args = C.setup(3, "int8 quantisation and block scales")
rng = np.random.default_rng(3)

# %% [markdown]
# ## bfloat16 is the top half of a float32

# %%
x = np.array([0.1, 1 / 3, 78.38367176906169, 1e-3], dtype=np.float32)
bits = quant.f32_to_bf16(x)
print("float32:        ", x)
print("bf16 bits (hex):", [f"{b:04x}" for b in bits])
print("back to float32:", quant.bf16_to_f32(bits))
print("relative error: ", np.abs(quant.bf16_to_f32(bits) - x) / x, "(at most 2^-9 =", 2 ** -9, ")")

# %% [markdown]
# ## Quantise a matrix, per column and per row block
# A random $W$ [512, 64] whose second block of 64 rows holds weights 20 times smaller than
# the rest, as a row-parallel weight might. One scale per column (B = 1) must cover the
# large rows, so the small rows lose most of their precision; with B = 8 blocks they get
# their own scale.

# %%
W = rng.standard_normal((512, 64)).astype(np.float32) * 0.02
W[64:128] *= 0.05
errors = {}
for blocks in (1, 8):
    qw = quant.quantize(W, blocks)
    back = quant.dequantize(qw)
    s = quant.bf16_to_f32(qw.scales)
    errors[blocks] = np.abs(back - W)
    rel = np.linalg.norm(back - W, axis=1) / np.linalg.norm(W, axis=1)
    print(f"B={blocks}: weight {qw.weight.dtype} {list(qw.weight.shape)}, scales bf16 "
          f"{list(qw.scales.shape)}; max |error| / scale = "
          f"{(errors[blocks].reshape(blocks, -1, 64) / s[:, None, :]).max():.3f}; "
          f"relative error of the small rows {rel[64:128].mean():.4f}, of the others "
          f"{np.delete(rel, range(64, 128)).mean():.4f}")

fig, axes = C.plt.subplots(1, 2, figsize=(9, 3.4))
for blocks, color in ((1, "tab:red"), (8, "tab:blue")):
    qw = quant.quantize(W, blocks)
    rel = np.linalg.norm(quant.dequantize(qw) - W, axis=1) / np.linalg.norm(W, axis=1)
    axes[0].plot(rel, color=color, lw=0.8, label=f"B = {blocks} scale rows")
    err = (quant.dequantize(qw) - W) / np.repeat(quant.bf16_to_f32(qw.scales), 512 // blocks, 0)
    axes[1].hist(err.ravel(), bins=60, range=(-0.6, 0.6), histtype="step", color=color,
                 label=f"B = {blocks}")
axes[0].set_yscale("log")
axes[0].axvspan(64, 128, color="gray", alpha=0.2)
axes[0].set_xlabel("row of W (shaded: rows 20x smaller)")
axes[0].set_ylabel("relative error of the row")
axes[0].set_title("int8 error per row")
axes[0].legend()
axes[1].set_xlabel("(dequantised - W) / its scale")
axes[1].set_ylabel("weights")
axes[1].set_title("error in units of the scale: within +-0.5")
axes[1].legend()
fig.tight_layout()
C.save_figure(fig, "quantisation_error")

# %% [markdown]
# ## A real tensor of the checkpoint
# Layer 0's attention output projection: B = 8 row blocks. The float weights it was
# quantised from are not in the checkpoint, so its rounding error cannot be measured, only
# sized: each weight is off by at most half its scale, and a rounding error spread evenly
# over $\pm s/2$ has rms $s/\sqrt{12}$. Relative to the weights' own rms $s \cdot
# \mathrm{rms}(q)$ that is $0.29 / \mathrm{rms}(q)$: the more of the int8 range the codes
# use, the finer the weights. Heavy tails (a few large weights per column, measured by the
# kurtosis) set large scales and leave the other codes small. The yardstick is a Gaussian
# matrix of the same shape, quantised the same way: a random checkpoint's weights are
# exactly that (make-checkpoint draws them so), a trained one's need not be.

# %%
model = C.load(args)
qw = model.checkpoint.params["transformer/decoder_layer_0/multi_head_attention/linear/w"]
print("weight:", qw.weight.dtype, list(qw.weight.shape), " scales:", list(qw.scales.shape))
gauss = quant.quantize(rng.standard_normal(qw.weight.shape).astype(np.float32), 8)


def code_stats(q):
    """rms and kurtosis of int8 codes (the kurtosis of codes, not of the float weights:
    each block-column's largest is pinned at 127)."""
    q = np.asarray(q).astype(np.float64)
    rms = np.sqrt(np.mean(q ** 2))
    return rms, np.mean(q ** 4) / rms ** 4


w8 = np.asarray(qw.weight)
s8 = quant.bf16_to_f32(np.asarray(qw.scales))
rms_q, kurtosis = code_stats(w8)
print(f"int8 values used: {w8.min()} .. {w8.max()}; at +-127 (each block-column's largest "
      f"weight): {np.mean(np.abs(w8) == 127):.2%}")
gauss_rms, gauss_kurtosis = code_stats(gauss.weight)
print(f"rms of the int8 codes {rms_q:.1f}, kurtosis {kurtosis:.2f} (Gaussian weights: "
      f"{gauss_rms:.1f}, {gauss_kurtosis:.2f}):", "heavier tails than a Gaussian's, so a few "
      "large weights set the scales and the rest get coarser codes" if kurtosis > 1.1 *
      gauss_kurtosis else "tails like a Gaussian's, no outliers setting the scales")
print(f"so its weights carry a rounding error of about {1 / np.sqrt(12) / rms_q:.2%} of their rms")
print("scales of column 0, one per row block:", s8[:, 0])

# %% [markdown]
# Do its row blocks need scales of their own? Compare how much the 8 block scales of a
# column differ with what the Gaussian matrix gives by chance (every block's largest
# weight varies a little), and re-quantise the tensor with one scale per column.

# %%
spread = float(np.mean(s8.max(0) / s8.min(0)))
g8 = quant.bf16_to_f32(gauss.scales)
chance = float(np.mean(g8.max(0) / g8.min(0)))
stored = quant.dequantize(qw)
one = quant.dequantize(quant.quantize(stored, 1))
print(f"largest / smallest block scale of a column: {spread:.2f} on average here, "
      f"{chance:.2f} for Gaussian weights of the same shape")
print(f"re-quantised with one scale per column, the tensor moves by "
      f"{np.linalg.norm(one - stored) / np.linalg.norm(stored):.2%} of its norm")
verdict = ("more than chance: some blocks hold smaller weights and keep their precision "
           "only with scales of their own" if spread > 1.25 * chance else
           "about as much as chance: no block holds much smaller weights, so on this "
           "checkpoint B = 8 buys little (the 20x-smaller block above is where it pays)")
print(f"the block scales differ {verdict}")

# %% [markdown]
# ## Multiplying without the float32 matrix
# The reference, `quant.linear(x, W)`, is `x @ dequantize(W)`: the definition that the rest
# of the model is written against. The engine (`minigrok/engine/`, not part of the reference) computes the same
# sums in tiles: `cpu.int8_matmul` widens `chunk_rows` int8 rows at a time and scales each
# block's partial sum once, so it never holds more than a chunk of widened rows. The tests
# hold it equal to `x @ dequantize(W)` (tests/test_engine.py).

# %%
from minigrok.engine import cpu

x = rng.standard_normal((3, qw.weight.shape[0])).astype(np.float32)
full = quant.linear(x, qw)
chunked = cpu.int8_matmul(x, np.asarray(qw.weight), quant.bf16_to_f32(np.asarray(qw.scales)),
                          chunk_rows=7)
C.peek("x @ dequantize(W)", full)
C.peek("engine: cpu.int8_matmul", chunked)
print("max |difference|:", float(np.abs(full - chunked).max()))

# %% [markdown]
# ## Try this
# - Quantise with `blocks=64`: how small does the error of the small rows get? What does it
#   cost in scale bytes?
# - Put one huge outlier (say 100) into a column of `W`: what happens to the rest of that
#   column's precision?
# - Exercise: `python -m minigrok exercises check dequantize` (write
#   `lessons/exercises/dequantize.py`).
#
# ## On the real model
# Count the bytes of every stored tensor of Grok-1:

# %%
from minigrok.formats.checkpoint import tensor_specs

n_int8 = sum(int(np.prod(s.shape)) for s in tensor_specs(C.GROK1) if s.scales)
n_scales = sum(int(np.prod(s.scales)) for s in tensor_specs(C.GROK1) if s.scales)
n_f32 = sum(int(np.prod(s.shape)) for s in tensor_specs(C.GROK1) if not s.scales)
print(f"int8 weights:  {C.fmt_count(n_int8)} parameters = {C.fmt_bytes(n_int8)}")
print(f"bf16 scales:   {C.fmt_count(n_scales)} = {C.fmt_bytes(2 * n_scales)}")
print(f"float32:       {C.fmt_count(n_f32)} (embedding, norms, routers) = {C.fmt_bytes(4 * n_f32)}")
total = n_int8 + n_f32
print(f"{C.fmt_count(total)} parameters; as bfloat16 they would take {C.fmt_bytes(2 * total)}, "
      f"as float32 {C.fmt_bytes(4 * total)}")
print(f"dequantising one expert matrix (6144 x 32768) to float32 would take "
      f"{C.fmt_bytes(6144 * 32768 * 4)} of memory, and 2 x 3 of them are used per layer and token: "
      f"the engine's cpu.int8_matmul widens a few MB of rows at a time instead")
