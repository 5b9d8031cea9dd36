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
# The top five next tokens after a few positions. On the tiny checkpoint the weights are
# random: each layer adds only a small update to the stream, so the stream stays close to
# the input embedding and, with tied embeddings (lesson 04), every position's top "next"
# token is the token itself, with a probability barely above uniform. On the real model
# the row after "The answer to life, the universe and everything is" should favour a number.

# %%
sp = C.tokenizer_or_none(model)
probs = np.exp(ref - ref.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
for t in (0, 1, len(tokens) - 5, len(tokens) - 1):
    top = np.argsort(-ref[t], kind="stable")[:5]
    names = [sp.id_to_piece(int(i)) if sp else str(int(i)) for i in top]
    print(f"after {C.labels(tokens)[t]!r:>12}: " + ", ".join(f"{n!r} {p:.4f}" for n, p in zip(names, probs[t, top])))
entropy = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1)
print(f"entropy of each row (max log V = {np.log(cfg.vocab_size):.2f}):", np.round(entropy, 2))

# %% [markdown]
# ## The layer order matters
# Use the layers in the order their files appear (0, 1, 10, 11, 2, ...) and the logits move.

# %%
file_order = sorted(range(cfg.num_layers), key=lambda i: f"decoder_layer_{i}")
h = embed(params, cfg, tokens)
for j, i in enumerate(file_order):
    h = decoder_layer(h, params["layers"][i], cfg, keep=keep, index=j)
scrambled = unembed(params, cfg, rms_norm(h, params["rms_norm"]))
err = np.abs(scrambled - ref).max() / np.abs(ref).max()
print(f"layers in file order: max |difference| / max |logit| = {err:.1%}; same argmax at "
      f"{np.mean(scrambled.argmax(-1) == ref.argmax(-1)):.0%} of positions")
if file_order == list(range(cfg.num_layers)):
    print(f"(with {cfg.num_layers} layers the file order is the numeric order: nothing moves)")
print("(a test that only compares greedy tokens can miss a scrambled model: compare the logits)")

# %% [markdown]
# ## Try this
# - `python -m minigrok logits --checkpoint DIR --tokens 422,3033 --out l.npy` writes the
#   same logits from the command line.
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
