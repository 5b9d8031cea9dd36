# %% [markdown]
# # Lesson 12: KV cache, sampling and generation
#
# **Goal.** Generate text: feed the prompt once, then one new token at a time, reusing
# everything already computed, and pick each token by Grok-1's sampling rule.
#
# **The idea.** *KV cache.* A token's key and value at a layer depend only on that token and
# the ones before it, so they never change once computed. Keep them, per layer:
# `k, v` [S, K, d] plus which positions are padding. Then the next token needs only its
# own forward pass, attending over the cache: the *prefill* processes the prompt in one
# call, each *decode* step processes one token at position `cache["length"]` (its RoPE
# angle starts there).
#
# *Sampling* (official `runners.py`): divide the last row of logits by the temperature,
# keep the *nucleus* and draw. The nucleus rule: sort the logits ascending, softmax, find
# the first position where the running total reaches $1 - p$; every logit at least as large
# as the logit there survives, the rest become $-10^{10}$. Then a categorical draw (minigrok
# uses the Gumbel-max trick with a seeded numpy generator; temperature 0 means greedy).
# The official `run.py` samples with temperature 0.01 and top_p 1: nearly greedy.
#
# **The code.** `minigrok/reference/attention.py`: `new_cache` (and `attention`'s cache branch);
# `minigrok/reference/model.py`: `forward(..., cache, last_only)`; `minigrok/reference/sampling.py`:
# `top_p_filter`, `sample_token`; `minigrok/reference/generate.py`: `generate_tokens`.

# %%
import _common as C
import numpy as np
from minigrok.reference.attention import new_cache
from minigrok.reference.generate import generate_tokens
from minigrok.reference.model import forward
from minigrok.reference.sampling import FILTERED_LOGIT, sample_token, top_p_filter

args = C.setup(12, "KV cache, sampling and generation")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)

# %% [markdown]
# ## Prefill, then one token at a time
# The cached logits must equal the full-sequence logits at the same positions.

# %%
full = forward(params, cfg, tokens)                                 # [T, V], no cache
cache = new_cache(cfg.num_layers, len(tokens), cfg.num_kv_heads, cfg.key_size)
prefill = forward(params, cfg, tokens[:10], cache, last_only=True)
print(f"cache: {cfg.num_layers} layers of k, v {list(cache['k'][0].shape)} and keep "
      f"{list(cache['keep'][0].shape)}")
print(f"after the prefill of 10 tokens: length {cache['length']}; "
      f"max |difference| {np.abs(prefill[0] - full[9]).max():.2e}")
for t in range(10, len(tokens)):
    step = forward(params, cfg, tokens[t:t + 1], cache, last_only=True)
    print(f"decode step at position {t}: length {cache['length']}, "
          f"max |difference| {np.abs(step[0] - full[t]).max():.2e}")

# %% [markdown]
# ## Temperature and the nucleus
# The last row of logits at four temperatures: the top probability, and how many tokens
# survive the nucleus filter at top_p = 0.9. This random checkpoint predicts one token
# (the current one, lesson 11) above a nearly flat tail of 131071 others, so the nucleus
# is either that token alone or a large part of the tail.

# %%
row = full[-1]
temperatures = (1.0, 0.5, 0.45, 0.4)
fig, ax = C.plt.subplots(figsize=(6.8, 3.6))
for temperature, color in zip(temperatures, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
    scaled = row / np.float32(temperature)
    kept = top_p_filter(scaled, 0.9) > FILTERED_LOGIT
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    n = int(kept.sum())
    print(f"T = {temperature:<5}: top probability {p.max():.4f}, nucleus(0.9) keeps "
          f"{n:>6} of {cfg.vocab_size} tokens ({p[kept].sum():.3f} of the mass)")
    ax.loglog(np.arange(1, len(p) + 1), np.sort(p)[::-1], color=color,
              label=f"T = {temperature}: nucleus keeps {n}")
    ax.axvline(n, color=color, ls=":", lw=1)
ax.set_xlabel("rank of the token")
ax.set_ylabel("probability")
ax.set_title("Next-token distribution by temperature; dotted: end of the top_p = 0.9 nucleus")
ax.legend(fontsize=8)
fig.tight_layout()
C.save_figure(fig, "nucleus")

# %% [markdown]
# ## Drawing tokens
# Greedy (temperature 0) is deterministic; sampling is deterministic for a given seed.

# %%
print("greedy:", sample_token(row, 0.0, 1.0, None))
for seed in (0, 1, 2):
    rng = np.random.default_rng(seed)
    print(f"seed {seed}, T = 0.5, top_p 0.9:", [sample_token(row, 0.5, 0.9, rng) for _ in range(6)])

# %% [markdown]
# ## Generation
# `generate_tokens` is the loop above: prefill, sample, feed the token back, stop at EOS.

# %%
prompt = tokens[:9].tolist()                   # "The answer to life the universe and everything is" (minus the comma)
sp = C.tokenizer_or_none(model)
for temperature, top_p, seed in ((0.0, 1.0, 0), (0.5, 0.9, 1)):
    new = list(generate_tokens(params, cfg, prompt, max_new_tokens=8, temperature=temperature,
                               top_p=top_p, seed=seed))
    text = repr(sp.decode(new)) if sp else ""
    print(f"T = {temperature}, top_p = {top_p}, seed {seed}: {new} {text}")

# %% [markdown]
# ## Try this
# - `python -m minigrok generate --prompt "Hello" --max-new-tokens 20 --temperature 0.8`.
# - Prefill the whole prompt at once vs one token at a time: same logits? Which is faster?
# - Exercises: `python -m minigrok exercises check nucleus` and
#   `python -m minigrok exercises check kv_cache`.
#
# ## On the real model

# %%
from minigrok.formats.checkpoint import active_int8_bytes

S, L, K, d = C.GROK1.sequence_len, C.GROK1.num_layers, C.GROK1.num_kv_heads, C.GROK1.key_size
per_token = 2 * L * K * d * 4
print(f"KV cache: {C.fmt_bytes(per_token)} per token (float32), {C.fmt_bytes(per_token * S)} "
      f"for the full {S}-token context")
act = active_int8_bytes(C.GROK1) + C.GROK1.vocab_size * C.GROK1.emb_size * 4
print(f"every decode step reads ~{C.fmt_bytes(act)} of weights for one token: decoding is "
      f"bound by memory bandwidth (lesson 14); a prefill reads them once for many tokens")
for bandwidth, where in ((3e9, "an NVMe disk, 3 GB/s"), (50e9, "RAM at 50 GB/s")):
    C.estimate(f"one decode step streaming from {where}", f"{act / bandwidth:.1f} s")
