# %% [markdown]
# # Lesson 02: the checkpoint on disk
#
# **Goal.** Know exactly what is in the released checkpoint: which file holds which
# parameter, how a file is laid out byte by byte, why minigrok can open 318 GB in seconds
# without reading it, and the one ordering trap that silently breaks loaders.
#
# **The idea.** The release is a folder `ckpt-0/` of 770 files `tensor00000_000` ...
# `tensor00769_000`, one per parameter: $2 + 64 \times 12$ (the embedding, the final norm,
# and 12 tensors per decoder layer). Each file is a Python *pickle* (protocol 4) of either
# a float32 numpy array or a `QuantizedWeight8bit` (int8 `weight`, bfloat16 `scales`,
# lesson 03). The array bytes sit raw inside the pickle, so they can be **memory-mapped**
# in place: the operating system reads a page only when the computation touches it.
#
# File $i$ holds the $i$-th parameter in the order JAX flattens the parameter dict, and JAX
# flattens dicts in **sorted key order**. Keys are strings, and as strings
# `decoder_layer_10` < `decoder_layer_2`. So the files hold the layers in the order
# 0, 1, 10, 11, ..., 19, 2, 20, ...: a loader that assumes numeric order puts the wrong
# weights into 62 of the 64 layers, and the model still produces plausible-looking output
# (lesson 13 measures the damage). The trap needs a layer 10: only a model of 11 or more
# layers has a `decoder_layer_10` to sort before `decoder_layer_2`. minigrok's built-in
# model has 4 layers, so its files happen to be in numeric order; the lesson writes a
# random 12-layer checkpoint (the `tiny` preset) to show the trap on real files.
#
# **The code.** `minigrok/formats/checkpoint.py` (`tensor_specs`, `tensor_file`, `open_checkpoint`,
# `inspect_rows`) and `minigrok/formats/safepickle.py` (reads the pickles without running them).

# %%
import pickletools
import time

import _common as C
import numpy as np
from minigrok.api import default_checkpoint
from minigrok.formats import safepickle
from minigrok.formats.checkpoint import (CKPT_DIR, find_root, inspect_rows, open_checkpoint,
                                         tensor_file, tensor_specs)

args = C.setup(2, "the checkpoint on disk")
root = find_root(args.checkpoint) if args.checkpoint else default_checkpoint(notice=None)
print("checkpoint:", root)
files = sorted((root / CKPT_DIR).iterdir())
print(f"{len(files)} files in {CKPT_DIR}/, {sum(f.stat().st_size for f in files):,} bytes")
if (root / "config.json").exists():
    print("config.json:", (root / "config.json").read_text().replace("\n", " ")[:200], "...")

# %% [markdown]
# ## Which file holds what
# `tensor_specs(config)` lists every parameter in file order: name, shape, dtype and, for
# quantised weights, the shape of the scales. Sorting the names is the whole rule.

# %%
def _rss_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))
    except (OSError, StopIteration):
        return float("nan")


rss_before = _rss_mb()
t0 = time.perf_counter()
ck = open_checkpoint(root)
opened_s = time.perf_counter() - t0
rss_after = _rss_mb()
cfg = ck.config
specs = ck.specs
for i, spec in enumerate(specs[:16]):
    scales = f" scales {list(spec.scales)}" if spec.scales else ""
    print(f"{tensor_file(i)}  {spec.name:<58} {spec.dtype:<8} {list(spec.shape)}{scales}")
print("...")

# %% [markdown]
# ## The sorted layer order
# The layer number of every file, in file order. A model of fewer than 11 layers has no
# `decoder_layer_10`, so sorting cannot scramble it; the trap is then shown on a random
# checkpoint of the `tiny` preset's 12 layers, written to a temporary folder.

# %%
import tempfile

from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import preset


def file_order(specs):
    """The decoder layer whose 12 tensors start at each layer-sized slot of ckpt-0/."""
    return [int(s.name.split("decoder_layer_")[1].split("/")[0]) for s in specs[2::12]]


order = file_order(specs)
print("layers in file order:", order)
if order == sorted(order):
    print(f"this checkpoint's {cfg.num_layers} layers are stored in numeric order: as strings, "
          "'decoder_layer_10' sorts before 'decoder_layer_2' only in a model of 11+ layers")
    scratch = tempfile.TemporaryDirectory(prefix="minigrok-lesson02-")
    demo = open_checkpoint(make_checkpoint(f"{scratch.name}/tiny", preset("tiny")))
    demo_order = file_order(demo.specs)
    print(f"a random {demo.config.num_layers}-layer checkpoint (preset tiny, in a temporary "
          f"folder) holds its layers in file order: {demo_order}")
else:
    scratch, demo, demo_order = None, ck, order
n = demo.config.num_layers
wrong = [L for L in range(n) if demo_order[L] != L]    # slot L is where numeric order looks
print(f"a loader assuming numeric order gets {len(wrong)} of {n} layers wrong:",
      ", ".join(f"layer {L} <- file of layer {demo_order[L]}" for L in wrong[:4]), "...")

# The proof is in the bytes: the first file where numeric order looks for layer L holds
# another layer's tensor, bit for bit.
L = wrong[0]
naive_file = demo.root / CKPT_DIR / tensor_file(2 + 12 * L)
got = safepickle.load(naive_file).weight
name = demo.specs[2 + 12 * L].name
same_as = {k: np.array_equal(got, demo.params[name.replace(f"_{demo_order[L]}/", f"_{k}/")].weight)
           for k in (demo_order[L], L)}
print(f"{naive_file.name}, where numeric order looks for layer {L}'s first tensor, holds {name}: "
      f"equal to layer {demo_order[L]}'s: {same_as[demo_order[L]]}, to layer {L}'s: {same_as[L]}")
real_order = sorted(range(C.GROK1.num_layers), key=lambda L: f"decoder_layer_{L}")
print("Grok-1's 64 layers in file order:", real_order[:14], "...")
print(f"in Grok-1, {sum(L != i for i, L in enumerate(real_order))} of 64 layers sit where "
      "numeric order does not look")

fig, axes = C.plt.subplots(1, 2, figsize=(9, 3.4))
demo_title = (f"this checkpoint ({n} layers)" if scratch is None
              else f"a {n}-layer checkpoint (preset tiny)")
for ax, layers, title in ((axes[0], n, demo_title),
                          (axes[1], C.GROK1.num_layers, "Grok-1 (64 layers)")):
    stored = sorted(range(layers), key=lambda L: f"decoder_layer_{L}")
    ax.plot(range(layers), stored, "o-", ms=3, label="file order (sorted strings)")
    ax.plot(range(layers), range(layers), "--", color="gray", label="numeric order")
    ax.set_xlabel("position of the layer's 12 files in ckpt-0/")
    ax.set_ylabel("decoder layer stored there")
    ax.set_title(title)
    ax.legend(loc="lower right" if layers < 20 else "upper left")
fig.suptitle("The sorted layer order: files hold layers 0, 1, 10, 11, ..., 2, 20, ...")
fig.tight_layout()
C.save_figure(fig, "layer_order")
del demo, got                                    # their memory maps hold the scratch files
if scratch is not None:
    scratch.cleanup()

# %% [markdown]
# ## Inside one file
# `pickletools.genops` walks a pickle's opcodes *without executing them*. A pickle is a
# program for a small stack machine: `STACK_GLOBAL` names a Python object to import and
# `REDUCE` / `NEWOBJ` call it. That is why the official loader's `pickle.load` would run
# whatever a tampered file asks; `minigrok/formats/safepickle.py` interprets these opcodes itself,
# accepts only the handful a numpy array and `QuantizedWeight8bit` need, and never reads
# the payload bytes (`BINBYTES`): it notes where they lie and memory-maps them.
#
# Here is layer 0's key projection, the smallest quantised tensor (memo bookkeeping left out):

# %%
index = next(i for i, s in enumerate(specs)
             if s.name == "transformer/decoder_layer_0/multi_head_attention/key/w")
path = root / CKPT_DIR / tensor_file(index)
data = path.read_bytes()
for op, arg, pos in pickletools.genops(data):
    if op.name in ("MEMOIZE", "BINGET", "FRAME"):          # bookkeeping, left out
        continue
    if isinstance(arg, (bytes, bytearray)):
        arg = f"<{len(arg):,} raw bytes: the payload>" if len(arg) > 8 else arg
    print(f"  {pos:>9}  {op.name:<18} {'' if arg is None else arg}")

# %% [markdown]
# ## Memory maps
# What `safepickle.load` returns: a read-only numpy view of an `np.memmap` of the file.

# %%
qw = safepickle.load(path)
base = qw.weight
while base is not None and not isinstance(base, np.memmap):
    base = base.base
print("weight:", qw.weight.dtype, qw.weight.shape, "writeable:", qw.weight.flags.writeable)
print("scales:", qw.scales.dtype, qw.scales.shape, "(uint16 bits of bfloat16:",
      qw.scales.dtype.metadata, ")")
print(f"backed by: {type(base).__name__} of {base.nbytes:,} bytes, the whole "
      f"{path.stat().st_size:,}-byte file mapped once")
payload = data.find(np.asarray(qw.weight).tobytes())
print(f"the int8 payload starts at byte {payload} of the {len(data):,}-byte file")
print(f"open_checkpoint: {len(specs)} files, {sum(f.stat().st_size for f in files):,} bytes, "
      f"opened in {opened_s:.2f} s; resident memory {rss_before:.0f} -> {rss_after:.0f} MB")

# %% [markdown]
# ## Try this
# - `python -m minigrok inspect --checkpoint DIR` prints the table above for every file,
#   with sizes and totals.
# - Change one byte of a copy of a tensor file and open it: which error names the file and
#   the byte offset?
# - Which tensor is the largest file? Which is the smallest? (`inspect_rows`)
# - Exercise `checkpoint_order`: given every tensor's name, say which file of ckpt-0/ holds
#   which: `python -m minigrok exercises check checkpoint_order`.
#
# ## On the real model
# 770 files, about 318 GB. Opening reads only the pickle headers (a few hundred bytes each)
# and checks every shape against the config; the 3.2 GB embedding file and the 64 x 3 expert
# files of ~1.6 GB each stay on disk until a computation touches their pages. The official
# loader instead copies every file into `/dev/shm` and unpickles it: it needs the whole
# model in RAM before the first token.

# %%
real = tensor_specs(C.GROK1)
sizes = {}
for spec in real:
    n = int(np.prod(spec.shape))
    sizes[spec.name] = n * (1 if spec.scales else 4) + (2 * int(np.prod(spec.scales))
                                                        if spec.scales else 0)
big = max(sizes, key=sizes.get)
print(f"Grok-1: {len(real)} tensors, {C.fmt_bytes(sum(sizes.values()))} of payload")
print(f"largest: {big} ({C.fmt_bytes(sizes[big])})")
rows = list(inspect_rows(ck))
print(f"this checkpoint's largest file: {max(rows, key=lambda r: r[6])[2]} "
      f"({C.fmt_bytes(max(r[6] for r in rows))})")
