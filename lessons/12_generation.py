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
worst = 0.0
for t in range(10, len(tokens)):
    step = forward(params, cfg, tokens[t:t + 1], cache, last_only=True)
    worst = max(worst, float(np.abs(step[0] - full[t]).max()))
print(f"{len(tokens) - 10} decode steps, one token each: length {cache['length']}; "
      f"max |difference| {worst:.2e} (float32 rounding: the same sums in another order)")

# %% [markdown]
# ## Temperature and the nucleus
# The next-token distribution after the whole story (where generation would start), at a
# few temperatures: the top token, the entropy, and how many tokens survive the nucleus
# filter at top_p = 0.9 and 0.5, with the mass they hold (always more than top_p: the rule
# takes tokens until their mass *exceeds* it). Dividing the logits by $T < 1$ sharpens the
# distribution towards the top token; $T > 1$ flattens it, and the ~129,800 ids the stories
# never use (one shared embedding row, lesson 11) begin to take a share.
#
# Watch the nucleus at high temperature. The rule compares logit *values*: every logit at
# least as large as the threshold's survives, ties included. The untrained ids all have the
# same logit, so they are kept or dropped as one block, and once together they hold more
# than $1 - p$ the nucleus keeps every one of them: the filter then removes nothing.
#
# On random weights this demo showed almost nothing: the row is one token (the current
# one, lesson 11) above a flat tail of 131,071 others, so the nucleus(0.9) keeps about
# 99,000 tokens at T = 1 and still about 36,000 at T = 0.5; only near T = 0.4 does it
# collapse onto the current token. There was no range of temperatures with a handful of
# plausible candidates, which is what a trained model has.

# %%
sp = C.tokenizer_or_none(model)


def piece(i):
    return repr(sp.id_to_piece(int(i))) if sp else str(int(i))


E = params["in_out_embed"]
shared = (E == E[-1]).all(axis=1)        # the ids that share the last id's row: untrained
if shared.sum() == 1:
    shared[:] = False
n_own = cfg.vocab_size - int(shared.sum())


def at_temperature(row, temperature, top_p=0.9):
    scaled = row / np.float32(temperature)
    p = np.exp((scaled - scaled.max()).astype(np.float64))
    p /= p.sum()
    kept = top_p_filter(scaled, top_p) > FILTERED_LOGIT
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum()
    return p, int(kept.sum()), entropy


row = full[-1]
print(f"after the story: {n_own} ids have their own embedding row (log {n_own} = "
      f"{np.log(n_own):.2f}; log V = {np.log(cfg.vocab_size):.2f})")
print("T      top token       entropy  nucleus(0.9)         nucleus(0.5)         untrained ids")
whole_block = None
for temperature in (0.25, 0.5, 0.7, 1.0, 1.5, 2.0):
    p, n, entropy = at_temperature(row, temperature)
    top = int(p.argmax())
    cells = []
    for top_p in (0.9, 0.5):
        kept = top_p_filter(row / np.float32(temperature), top_p) > FILTERED_LOGIT
        cells.append(f"{int(kept.sum()):>6} ({p[kept].sum():.3f})")
        if top_p == 0.9 and shared.any() and kept[shared].all() and whole_block is None:
            whole_block = temperature, p[shared].sum()
    print(f"{temperature:<5}  {piece(top):<10} {p[top]:.3f}  {entropy:5.2f}    "
          f"{cells[0]:<20} {cells[1]:<20} {p[shared].sum():.1e}")
if whole_block:
    print(f"from T = {whole_block[0]} the {int(shared.sum())} tied untrained ids hold "
          f"{whole_block[1]:.2f} > 1 - 0.9 of the mass, and nucleus(0.9) keeps every one of them")

# %% [markdown]
# The figure: left, the probabilities of the row's top tokens at four temperatures; right,
# the entropy and the log of the nucleus size (both in nats, both the log of "how many
# tokens are in play") over a range of temperatures. The plotted values are rounded (to
# well under a pixel): the BLAS library's last-bit noise, which depends on how many threads
# it runs, then does not reach the figure's bytes.

# %%
fig, (left, right) = C.plt.subplots(1, 2, figsize=(9, 3.6))
order = np.argsort(-row, kind="stable")[:12]
for temperature, color in zip((0.5, 1.0, 1.5, 2.0), ("tab:blue", "tab:green", "tab:orange", "tab:red")):
    p, n, _ = at_temperature(row, temperature)
    left.plot(np.arange(len(order)), np.round(p[order], 3), "o-", color=color, ms=3,
              label=f"T = {temperature}: nucleus keeps {n}")
left.set_xticks(np.arange(len(order)), [piece(i).strip("'") for i in order], rotation=90,
                fontsize=7)
left.set_ylabel("probability")
left.set_title("The row's top tokens by temperature")
left.legend(fontsize=7)
grid = np.round(np.geomspace(0.1, 3.0, 30), 4)
stats = [at_temperature(row, t) for t in grid]
right.plot(grid, [round(e, 2) for _, _, e in stats], "o-", ms=3, label="entropy")
right.plot(grid, [round(np.log(n), 2) for _, n, _ in stats], "s-", ms=3,
           label="log (nucleus(0.9) size)")
right.axhline(np.log(cfg.vocab_size), color="black", ls="--", lw=1, label=f"log {cfg.vocab_size}")
if n_own < cfg.vocab_size:
    right.axhline(np.log(n_own), color="gray", ls=":", lw=1, label=f"log {n_own} (own rows)")
right.set_xscale("log")
right.set_xticks([0.1, 0.2, 0.5, 1, 2, 3], ["0.1", "0.2", "0.5", "1", "2", "3"])
right.minorticks_off()
right.set_xlabel("temperature")
right.set_ylabel("nats")
right.set_title("How many tokens are in play")
right.legend(fontsize=7)
fig.tight_layout()
C.save_figure(fig, "nucleus")

# %% [markdown]
# ## Drawing tokens
# Greedy (temperature 0) is deterministic; sampling is deterministic for a given seed.

# %%
print("greedy:", piece(sample_token(row, 0.0, 1.0, None)))
for seed in (0, 1, 2):
    rng = np.random.default_rng(seed)
    drawn = [piece(sample_token(row, 1.0, 0.9, rng)) for _ in range(6)]
    print(f"seed {seed}, T = 1.0, top_p 0.9:", " ".join(drawn))

# %% [markdown]
# ## Generation
# `generate_tokens` is the loop above: prefill, sample, feed the token back, stop at EOS.
# The same prompt and seed at rising temperatures: greedy and low temperatures give the
# model's most likely story (readable, though it may repeat itself); around 1 the story
# varies more; well above 1 it breaks. The break has a clear cause here: once an untrained
# id is drawn the model is reading an input it never saw in training, and the untrained
# ids tend to take over from there. The nucleus guards against this only where the
# untrained block holds less than $1 - p$, hence the last line's small top_p.
#
# On random weights greedy decoding repeated the prompt's last token over and over, and
# sampling gave unrelated word pieces at every temperature.

# %%
prompt = tokens[:13].tolist()                  # "Once upon a time, there was a little girl named Mia."
if sp:
    print("prompt:", repr(sp.decode(prompt)))
for temperature, top_p in ((0.0, 1.0), (0.7, 1.0), (1.0, 1.0), (1.5, 1.0), (1.5, 0.5)):
    new = np.array(list(generate_tokens(params, cfg, prompt, max_new_tokens=32, seed=12,
                                        temperature=temperature, top_p=top_p)))
    odd = shared[new]
    note = f"{len(new)} tokens"
    if shared.any() and not odd.any():
        note += ", every one from the stories' vocabulary"
    elif odd.any():
        first = int(odd.argmax())
        note = (f"first untrained id at token {first + 1}; {int(odd[first:].sum())} of the "
                f"{len(new) - first} from there are untrained")
    text = repr(sp.decode(new.tolist())) if sp else str(new.tolist())
    print(f"\nT = {temperature}, top_p = {top_p}, seed 12 ({note}):\n  {text}")

# %% [markdown]
# ## Try this
# - `python -m minigrok generate --prompt "Hello" --max-new-tokens 20 --temperature 0.8`.
# - Prefill the whole prompt at once vs one token at a time: same logits? Which is faster?
# - Exercises: `python -m minigrok exercises check nucleus` and
#   `python -m minigrok exercises check kv_cache`.
# - Capstone, exercise `greedy_generate`: the greedy loop on a tiny random Grok-1, stopping
#   at EOS and at max_new_tokens, checked against generate_tokens:
#   `python -m minigrok exercises check greedy_generate`.
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
