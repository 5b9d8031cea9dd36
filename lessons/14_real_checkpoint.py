# %% [markdown]
# # Lesson 14: running the real 314B checkpoint
#
# **Goal.** Know what it takes to run the released Grok-1 with minigrok: disk, memory, and
# how long a token takes, computed from the model's real sizes and this machine's measured
# memory bandwidth. Everything in lessons 01-13 runs unchanged on it:
# `python lessons/11_forward.py --checkpoint /data/grok-1` (slowly).
#
# **The idea.** Generating one token multiplies one activation vector by every *active*
# weight once: attention (all of it) and 2 of 8 experts in each of 64 layers, about 83 GB of
# int8, plus the 3.2 GB float32 embedding for the logits. Two floating-point operations
# per weight byte is little work per byte, so decoding speed is set by how fast those bytes
# arrive: from the page cache in RAM (tens of GB/s), or from disk (a few GB/s) when the
# 318 GB do not fit in memory.
#
# $$\text{seconds per token} \gtrsim \frac{\text{bytes read per token}}{\text{bandwidth}}.$$
#
# minigrok memory-maps the checkpoint (lesson 02): its own memory is the activations and the
# KV cache; the weights live in the operating system's page cache, which keeps whatever fits.
#
# **The code.** `minigrok/formats/checkpoint.py`: `active_int8_bytes`, `tensor_specs`,
# `open_checkpoint`; `minigrok/engine/weights.py`: `Int8Weight(weight, scales).matmul(x)` (the
# engine's product that reads the int8 bytes, lesson 15); `minigrok bench` measures a
# checkpoint end to end.
#
# Numbers below are labelled **measured** (on this machine, now) or **estimate** (sizes
# divided by an assumed or measured speed).

# %%
import sys
import time

import _common as C
import numpy as np
from minigrok.api import default_checkpoint
from minigrok.engine.weights import Int8Weight
from minigrok.formats.checkpoint import CKPT_DIR, active_int8_bytes, find_root, open_checkpoint, tensor_specs
from minigrok.reference import quant

args = C.setup(14, "running the real 314B checkpoint")
G = C.GROK1

# %% [markdown]
# ## The sizes

# %%
specs = tensor_specs(G)
n_params = sum(int(np.prod(s.shape)) for s in specs)
payload = sum(int(np.prod(s.shape)) * (1 if s.scales else 4) + 2 * int(np.prod(s.scales or (0,)))
              for s in specs)
active = active_int8_bytes(G)
embedding = G.vocab_size * G.emb_size * 4
kv_per_token = 2 * G.num_layers * G.num_kv_heads * G.key_size * 4
print(f"parameters:               {n_params:,} ({C.fmt_count(n_params)})")
print(f"checkpoint payload:       {payload:,} bytes ({C.fmt_bytes(payload)}; ~318 GB on the hub)")
print(f"active int8 per token:    {active:,} bytes ({C.fmt_bytes(active)})")
print(f"embedding (logits):       {embedding:,} bytes ({C.fmt_bytes(embedding)}) float32")
print(f"read per decoded token:   {C.fmt_bytes(active + embedding)}")
print(f"KV cache:                 {C.fmt_bytes(kv_per_token)} per token, "
      f"{C.fmt_bytes(kv_per_token * G.sequence_len)} at {G.sequence_len} tokens (float32)")

attention = G.num_layers * (2 * G.emb_size * G.num_q_heads * G.key_size
                            + 2 * G.emb_size * G.num_kv_heads * G.key_size)
experts_read = active - attention
experts_stored = G.num_layers * G.num_experts * 3 * G.emb_size * G.ffn_size
fig, ax = C.plt.subplots(figsize=(7.5, 2.6))
for row, (label, parts) in enumerate((
        ("read per token", [attention, experts_read, embedding]),
        ("stored on disk", [attention, experts_stored, embedding]))):
    left = 0
    for value, name, color in zip(parts, ("attention (int8)", "experts (int8)", "embedding (fp32)"),
                                  ("tab:blue", "tab:orange", "tab:green")):
        ax.barh(row, value / 1e9, left=left, color=color, label=name if row == 0 else None)
        left += value / 1e9
    ax.text(left + 3, row, f"{left:.0f} GB", va="center", fontsize=8)
ax.set_yticks([0, 1], ["read per token", "stored on disk"])
ax.set_xlabel("GB")
ax.set_xlim(0, 370)
ax.set_title("Grok-1: what one token reads vs what is stored")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
C.save_figure(fig, "bytes_per_token")

# %% [markdown]
# ## This machine's bandwidth
# Two measurements: reading a 256 MB float32 array (the best case: plain memory
# bandwidth), and the engine's `Int8Weight(weight, scales).matmul(x)` of one token against a
# 64 MB int8 matrix (minigrok's own decode kernel: int8 widened to float32 in cache, then a
# matrix-vector product; the reference's `x @ dequantize(W)` would widen all of it first).

# %%
big = np.ones(1 << 26, dtype=np.float32)                         # 256 MB, pages touched
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    big.sum()
    best = min(best, time.perf_counter() - t0)
ram_bw = big.nbytes / best
del big
C.measured("numpy read bandwidth (256 MB float32 sum)", f"{ram_bw / 1e9:.1f} GB/s")

rng = np.random.default_rng(14)
w = Int8Weight(rng.integers(-127, 128, (4096, 16384), dtype=np.int8),
               quant.f32_to_bf16(np.full((8, 16384), 1e-3, np.float32)))
x = rng.standard_normal((1, 4096)).astype(np.float32)
w.matmul(x)                                                      # warm up
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    w.matmul(x)
    best = min(best, time.perf_counter() - t0)
kernel_bw = w.weight.nbytes / best
C.measured("Int8Weight.matmul, 1 token x 64 MB int8", f"{kernel_bw / 1e9:.1f} GB/s of int8 weights")

# %% [markdown]
# ## On the real model: from bytes to seconds
# Per decoded token, for the weights in RAM (page cache holding all 318 GB, which needs a
# machine with more than ~330 GB of memory) or streamed from a disk.

# %%
per_token = active + embedding
C.estimate("RAM-resident, at this machine's numpy read bandwidth", f"{per_token / ram_bw:.1f} s/token")
C.estimate("RAM-resident, at minigrok's measured int8 kernel speed", f"{per_token / kernel_bw:.1f} s/token")
for name, bw in (("NVMe SSD, 3 GB/s (assumed)", 3e9), ("SATA SSD, 0.5 GB/s (assumed)", 0.5e9),
                 ("server RAM, 200 GB/s (assumed; the kernel must keep up)", 200e9)):
    C.estimate(name, f"{per_token / bw:.1f} s/token")
C.estimate("prompt of 100 tokens, compute-bound at 1 TFLOP/s (assumed)",
           f"{100 * 2 * active / 1e12:.0f} s")
print("a prompt reads each expert once for all the tokens that chose it, so prefill is far "
      "cheaper per token than decoding")

# %% [markdown]
# ## Measured on the checkpoint at hand
# Open it (headers only) and, for a small checkpoint, time a few decoded tokens and turn
# them into an effective bandwidth. For a large one pass `--measure` to time one decode step
# (it reads ~86 GB).

# %%
root = find_root(args.checkpoint) if args.checkpoint else default_checkpoint(notice=None)
t0 = time.perf_counter()
ck = open_checkpoint(root)
C.measured(f"open_checkpoint ({len(ck.specs)} files)", f"{time.perf_counter() - t0:.2f} s")
cfg = ck.config
on_disk = sum(f.stat().st_size for f in (root / CKPT_DIR).iterdir())
read = active_int8_bytes(cfg) + cfg.vocab_size * cfg.emb_size * 4
print(f"this checkpoint: {cfg.num_layers} layers, D = {cfg.emb_size}, {C.fmt_bytes(on_disk)} on disk, "
      f"{C.fmt_bytes(read)} read per decoded token")
if read < 2e9 or "--measure" in sys.argv:
    from minigrok.reference.generate import generate_tokens
    model = C.load(args)
    prompt = C.tokens_for(cfg)[:8].tolist()
    times, new = [time.perf_counter()], []
    for token in generate_tokens(model.params, cfg, prompt, max_new_tokens=4 if read < 2e9 else 2,
                                 layer_fn=model.layer_fn):
        times.append(time.perf_counter())
        new.append(token)
    steps = np.diff(times)[1:]                                   # decode steps, prefill left out
    C.measured("decode", f"{1 / steps.mean():.1f} tokens/s ({steps.mean() * 1e3:.0f} ms/token), "
               f"{read / steps.mean() / 1e9:.2f} GB/s effective")
    tok = C.tokenizer_or_none(model)
    print("the timed tokens (greedy):", repr(tok.decode(prompt + new)) if tok else prompt + new)
else:
    C.estimate("one decode step of this checkpoint at the measured int8 speed",
               f"{read / kernel_bw:.0f} s (pass --measure to time it)")

# %% [markdown]
# ## Try this
# - `python -m minigrok bench --checkpoint DIR` measures load time, prefill and decode speed
#   and peak memory for any checkpoint.
# - `python -m minigrok make-checkpoint --preset grok-1 --num-layers 1 --out /tmp/g1` writes
#   one full-width Grok-1 layer (~10 GB with the embedding): time a decode step on it and
#   multiply by 64.
# - Run twice in a row: the second run finds the pages in the page cache. How much faster?
#
# ## Memory, in short
# - Weights: memory-mapped, read on demand, kept by the page cache as RAM allows.
# - minigrok's own memory: the activations ([T, 6144] floats per step, the largest a
#   [T, 32768] expert hidden state), the KV cache (above), and a few MB of widened int8 rows.
# - The official code instead copies all 318 GB into `/dev/shm` and then into accelerator
#   memory: it needs the whole model resident before it starts.
