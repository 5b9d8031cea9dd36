# %% [markdown]
# # Lesson 13: checking against the official code
#
# **Goal.** Know how minigrok proves it computes what xAI's release computes, and why that
# proof needs care: some real porting bugs change every logit, others change nothing at
# all, and a few hide on random weights.
#
# **The idea: an oracle.** The official code (xai-org/grok-1, JAX + Haiku) is the
# definition of Grok-1. minigrok never copies it; it *runs* it:
# 1. `tests/oracle/setup_venv.sh` builds a separate Python 3.11 environment with the exact
#    versions the release needs (jax 0.4.25, dm-haiku 0.0.12);
# 2. minigrok writes a small checkpoint in the official on-disk format (lesson 02);
# 3. `tests/oracle/official_logits.py` loads it with the official `ModelRunner` on 8
#    emulated CPU devices (the official model only works sharded 8 ways: the row-block
#    scales of lesson 03 broadcast inside its `shard_map`) and saves its logits;
# 4. the oracle suite (`tests/oracle/`) compares them with minigrok's.
#
# The official code computes activations in bfloat16, so a float32 port cannot agree to the
# last bit: the tests accept 1% of the largest logit with per-position correlation above
# 0.9999 (measured: 0.46%, 0.999997), and with the official activations switched to float32
# (`--float32`) they demand 1e-4 (measured ~1e-5).
#
# **The idea: mutants.** A check is only as good as the bugs it catches. Below we plant the
# bugs real ports have shipped or invited into minigrok itself (by temporarily swapping one
# function) and measure what each does to the logits.
#
# **The code.** `tests/oracle/official_logits.py`, `tests/oracle/oracle_checks.py`; the mutants
# patch `minigrok/reference/moe.py`'s `route` and `gelu`, `minigrok/reference/attention.py`'s `apply_rope`
# and `SOFT_CAP`, and reorder `params["layers"]`.

# %%
import contextlib
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
from minigrok.environment import cache_dir
from minigrok.reference import attention as attention_module
from minigrok.reference import moe as moe_module
from minigrok.reference.model import forward
from minigrok.reference.rmsnorm import rms_norm
from minigrok.reference.rope import rope_angles

args = C.setup(13, "checking against the official code")
model = C.load(args)
cfg, params = model.config, model.params
tokens = C.tokens_for(cfg)
reference = forward(params, cfg, tokens)


@contextlib.contextmanager
def patched(module, name, value):
    """Swap ``module.name`` for ``value`` inside the block (how the mutants are planted)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def damage(logits, ref=reference):
    """(max |difference| / max |logit|, fraction of positions whose top token changed)."""
    return (float(np.abs(logits - ref).max() / np.abs(ref).max()),
            float(np.mean(logits.argmax(-1) != ref.argmax(-1))))

# %% [markdown]
# ## The mutants
# Each is a mistake a port can make while "obviously" implementing Grok-1:
# - **renormalised gates**: dividing the two gates by their sum (Mixtral-style routing code);
# - **erf GELU**: `torch.nn.functional.gelu`'s default is the exact erf form, Grok-1 uses the
#   tanh approximation;
# - **interleaved RoPE**: pairing features $(2i, 2i+1)$ instead of $(i, i + d/2)$;
# - **numeric layer order**: reading file $2 + 12 L$ as layer $L$ (lesson 02);
# - **BOS prepended**: encoding the prompt with `add_bos=True`; the official runner does not;
# - **no soft cap**: leaving out $30 \tanh(s/30)$ (on random weights the scores are small
#   and the cap bends them only a little; on a trained model it matters more).

# %%
def renormalised_route(x, router, k, _route=moe_module.route):
    probs, ids, gates = _route(x, router, k)
    return probs, ids, gates / gates.sum(-1, keepdims=True)


def erf_gelu(x):
    erf = np.vectorize(math.erf, otypes=[np.float32])
    return 0.5 * x * (1 + erf(x / np.float32(math.sqrt(2))))


def interleaved_rope(x, positions):
    ang = rope_angles(positions, x.shape[-1])[:, None, : x.shape[-1] // 2]     # same angles
    out = np.empty(x.shape, np.float32)
    out[..., 0::2] = x[..., 0::2] * np.cos(ang) - x[..., 1::2] * np.sin(ang)
    out[..., 1::2] = x[..., 0::2] * np.sin(ang) + x[..., 1::2] * np.cos(ang)
    return out


file_order = sorted(range(cfg.num_layers), key=lambda i: f"decoder_layer_{i}")
mutants = {}
with patched(moe_module, "route", renormalised_route):
    mutants["renormalised gates"] = forward(params, cfg, tokens)
with patched(moe_module, "gelu", erf_gelu):
    mutants["erf GELU"] = forward(params, cfg, tokens)
with patched(attention_module, "apply_rope", interleaved_rope):
    mutants["interleaved RoPE"] = forward(params, cfg, tokens)
mutants["numeric layer order"] = forward(
    dict(params, layers=[params["layers"][i] for i in file_order]), cfg, tokens)
mutants["BOS prepended"] = forward(params, cfg, np.concatenate([[1], tokens]))[1:]
with patched(attention_module, "SOFT_CAP", 1e9):                 # 1e9 tanh(s / 1e9) = s
    mutants["no soft cap"] = forward(params, cfg, tokens)
print(f"{'mutant':<22} {'max |diff| / max |logit|':>26} {'top token changed':>19}")
results = {}
for name, logits in mutants.items():
    results[name] = damage(logits)
    print(f"{name:<22} {results[name][0]:>26.2e} {results[name][1]:>18.0%}")

# %% [markdown]
# ## Why renormalising the gates changes nothing
# For token $t$ the MoE output is $m_t = g_1 y_1 + g_2 y_2$. Renormalising divides both gates
# by the same number $c_t = g_1 + g_2$, so $m'_t = m_t / c_t$: every token's output is only
# *rescaled*. The very next thing Grok-1 does with $m$ is `rms_norm_3`, and RMSNorm is
# scale-invariant (lesson 05): $\mathrm{RMSNorm}(m_t / c_t) = \mathrm{RMSNorm}(m_t)$ exactly,
# up to $\epsilon$ while $\overline{m_t^2} \gg \epsilon$. The bug is real (below, the MoE outputs
# differ by up to tens of percent) and *invisible* in every later number: the sandwich norm
# hides it.

# %%
layer = params["layers"][0]
x = C.moe_inputs(params, cfg, tokens)[0]
m, _, _, gates = moe_module.moe(x, layer["router"], **layer["moe"], num_selected=cfg.num_selected_experts)
with patched(moe_module, "route", renormalised_route):
    m2, _, _, _ = moe_module.moe(x, layer["router"], **layer["moe"], num_selected=cfg.num_selected_experts)
c = gates.sum(-1)
print("per token, layer 0:")
print(f"{'token':>12} {'g1 + g2':>8} {'|m - m_renorm| / |m|':>22} {'m_renorm * c == m':>18} "
      f"{'after rms_norm_3':>17} {'mean(m^2)':>10}")
for t in range(len(tokens)):
    rel = np.linalg.norm(m[t] - m2[t]) / np.linalg.norm(m[t])
    same = np.allclose(m2[t] * c[t], m[t], rtol=1e-5, atol=1e-6)
    after = np.abs(rms_norm(m[t:t + 1], layer["rms_norm_3"]) - rms_norm(m2[t:t + 1], layer["rms_norm_3"])).max()
    print(f"{C.labels(tokens)[t]:>12} {c[t]:>8.3f} {rel:>22.3f} {str(same):>18} {after:>17.1e} {np.mean(m[t] ** 2):>10.3f}")
print(f"eps = 1e-5; the smallest mean(m^2) of a token here is {min(np.mean(m ** 2, -1)):.3f}, far above "
      "it, so the invariance holds to float rounding")

# %% [markdown]
# ## What each check can see
# This lesson accepts 1% against the official bfloat16 run and 1e-4 against its
# float32 run. Sort the mutants by those lines. Note the last column of the table above
# too: on random weights no mutant changes a single top token, so comparing generated text
# would catch none of them.

# %%
for name, (err, _) in results.items():
    if err < 1e-4:
        verdict = "hidden from both comparisons with the official code"
    elif err < 1e-2:
        verdict = "missed by the bfloat16 comparison, caught by the float32 one"
    else:
        verdict = "caught by both comparisons"
    print(f"{name:<22} {err:.1e}  {verdict}")

# %% [markdown]
# On the tiny checkpoint two mutants hide:
# - **renormalised gates**, exactly, for the reason above: no test on the logits of any
#   checkpoint, random or real, can ever see it. Only a check of the gates themselves
#   (`tests/test_components.py`, and golden vectors of the intermediates) catches it, and
#   it is harmless for the logits, though not for anyone reading the gates.
# - **erf GELU**, nearly: the two GELUs never differ by more than $4.7 \times 10^{-4}$
#   (lesson 09), and the post-norm shrinks that further, so on this checkpoint the logits
#   move by a few $10^{-5}$, under even the float32 tolerance. `tests/test_components.py`
#   pins `gelu` to the tanh formula on chosen points for that reason.
#
# The others (RoPE layout, layer order, BOS, soft cap) move its logits by percents, far
# above the bfloat16 noise: the oracle sees them.
#
# ## A picture

# %%
names = list(results)
fig, ax = C.plt.subplots(figsize=(7, 3.2))
values = [max(results[n][0], 1e-9) for n in names]
colors = ["tab:green" if v < 1e-4 else ("tab:orange" if v < 1e-2 else "tab:red") for v in values]
ax.barh(names, values, color=colors)
ax.set_xscale("log")
ax.set_xlim(1e-9, 10)
for line, label in ((1e-2, "bfloat16\ntolerance"), (1e-4, "float32\ntolerance")):
    ax.axvline(line, color="gray", ls="--", lw=1)
    ax.text(line * 1.15, len(names) - 0.6, label, fontsize=7, va="top")
ax.invert_yaxis()
ax.set_xlabel("max |logit difference| / max |logit|  (log scale; 1e-9 = none)")
ax.set_title(f"Planted bugs vs the correct logits ({cfg.num_layers} layers, D = {cfg.emb_size})")
fig.tight_layout()
C.save_figure(fig, "mutants")

# %% [markdown]
# ## The oracle itself (optional)
# If the official source and the oracle environment are on this machine, run the official
# forward on a 3-layer checkpoint and compare, including with the mutants: a mutant that
# hides from minigrok's own logits hides from the oracle too.

# %%
from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import preset

src = Path(os.environ.get("GROK1_SRC", Path.home() / ".cache/minigrok/grok-1"))
venv = Path(os.environ.get("MINIGROK_ORACLE_VENV", Path.home() / ".cache/minigrok/oracle-venv"))
script = C.REPO / "tests" / "oracle" / "official_logits.py"
if (src / "model.py").is_file() and (venv / "bin" / "python").exists() and script.is_file():
    import dataclasses

    import minigrok

    small = cache_dir() / "lesson13-oracle-3layers"
    small_cfg = dataclasses.replace(preset("tiny"), vocab_size=1024, num_layers=3)
    if not (small / "ckpt-0").is_dir():
        make_checkpoint(small, small_cfg, seed=13, force=True)
    ids = [5, 17, 0, 300, 9, 1000, 77, 3]          # with a pad (0) in the middle
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = subprocess.run([str(venv / "bin" / "python"), str(script), "--checkpoint", str(small),
                              "--tokens", ",".join(map(str, ids)), "--out", f"{tmp}/o.npy",
                              "--src", str(src)], capture_output=True, text=True, timeout=300)
        if run.returncode == 0:
            official = np.load(f"{tmp}/o.npy")
            print(f"official forward: {official.shape}, {time.perf_counter() - t0:.1f} s")
            small_model = minigrok.load(small)
            ours = small_model.logits(ids)
            err, changed = damage(ours, official)
            corr = min(np.corrcoef(official[t], ours[t])[0, 1] for t in range(len(ids)))
            print(f"minigrok vs official (bfloat16): {err:.2%} of the largest logit, "
                  f"lowest correlation {corr:.6f}, top token changed at {changed:.0%}")
            p = small_model.params
            with patched(moe_module, "route", renormalised_route):
                hidden = damage(forward(p, small_cfg, np.array(ids)), official)[0]
            with patched(moe_module, "gelu", erf_gelu):
                seen = damage(forward(p, small_cfg, np.array(ids)), official)[0]
            print(f"  renormalised-gates mutant vs official: {hidden:.2%}; erf-GELU mutant: {seen:.2%}")
        else:
            print("the official code failed:", run.stderr.strip().splitlines()[-1:])
else:
    print(f"skipped: the official source ({src}/model.py) or the oracle venv ({venv}) is not "
          "here. Extract model.py, runners.py and checkpoint.py of xai-org/grok-1 (commit "
          "7050ed2) into that folder and run `bash tests/oracle/setup_venv.sh`.")

# %% [markdown]
# ## Try this
# - Plant your own mutant: `1 + scale` in RMSNorm (patch `minigrok.reference.layer.rms_norm`), or the
#   multiplier applied after the cap. Which are visible?
# - Make the soft cap matter more: scale layer 0's query weights up (a copy of `params`)
#   until scores reach 50, then rerun the "no soft cap" mutant.
# - Golden vectors (`python -m minigrok golden`, `docs/golden-format.md`) record every
#   intermediate of a forward pass, so a port can find the *first* stage where it departs:
#   that is how the renormalised gates show up after all.
#
# ## On the real model
# The oracle cannot run the 314B model on an ordinary machine: the official loader copies
# all 318 GB into `/dev/shm` and then holds the model in device memory. That is why the
# checks run on small checkpoints with the exact same structure, format and code paths,
# and why bugs that hide in the logits (the gates, the GELU form) need their own targeted
# tests.

# %%
print(f"the real checkpoint: 770 files, ~318 GB; the oracle's small checkpoint: "
      f"2 + 3 x 12 = 38 files, {sum(f.stat().st_size for f in (cache_dir() / 'lesson13-oracle-3layers' / 'ckpt-0').glob('*')) / 1e6:.1f} MB"
      if (cache_dir() / "lesson13-oracle-3layers" / "ckpt-0").is_dir() else
      "the real checkpoint: 770 files, ~318 GB")
