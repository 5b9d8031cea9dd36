"""What every lesson shares: the command line, the checkpoint, fixed tokens, figures, printing.

Lessons run as scripts (``python lessons/06_rope.py [--checkpoint DIR]``) and as notebooks
(jupytext / VS Code read the ``# %%`` cells). Without ``--checkpoint`` they use minigrok's
built-in model (Grok-1's exact structure and file format at width 128, 4 layers, trained on
minigrok's stories by lesson 16's ``minigrok train``), written into the cache on first use.

Figures go to ``lessons/figures/NN_name.png``, or to ``$MINIGROK_FIGURES`` when set (CI and
tests point it at a temporary folder). Their bytes are reproducible: fixed seeds, fixed
tokens, fixed size and dpi, and no version stamp in the PNG metadata; the one figure of
measured speeds (lesson 15) goes to ``figures/measured/``, which git ignores. They are shown only in
an interactive session (Jupyter, IPython, ``python -i``); scripts use the Agg backend.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

LESSONS = Path(__file__).resolve().parent
REPO = LESSONS.parent

try:                                     # a clone that is not pip-installed: use its package
    import minigrok  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))
    import minigrok  # noqa: F401

import numpy as np  # noqa: E402


def interactive() -> bool:
    """True in Jupyter / IPython / ``python -i``: figures are then shown, not only saved."""
    return "ipykernel" in sys.modules or hasattr(sys, "ps1") or bool(sys.flags.interactive)


import matplotlib  # noqa: E402

if not interactive():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9,
                            "axes.titlesize": 10, "image.cmap": "viridis"})

from minigrok.errors import MinigrokError  # noqa: E402
from minigrok.reference.config import GROK1  # noqa: E402,F401
from minigrok.reference.moe import route  # noqa: E402
from minigrok.reference.rope import rope_angles  # noqa: E402

# A story of the kind the built-in model was trained on, in Grok-1's tokenizer (lesson 01
# checks these against the real tokenizer.model). "Mia" comes three times: to predict the
# second and third, the model must copy the name from earlier in the context (lesson 07).
# Fixed ids keep every lesson's numbers and figures the same whether or not a tokenizer is
# at hand.
TOKENS = [3808, 3038, 327, 677, 130111, 692, 469, 327, 1359, 2808, 4469, 29283, 130109, 29283,
          660, 327, 2502, 3118, 130109, 1735, 1097, 130111, 29283, 2968, 656, 2502, 3118, 130109]
PIECES = ["▁Once", "▁upon", "▁a", "▁time", ",", "▁there", "▁was", "▁a", "▁little", "▁girl",
          "▁named", "▁Mia", ".", "▁Mia", "▁had", "▁a", "▁red", "▁ball", ".", "▁One", "▁day", ",",
          "▁Mia", "▁lost", "▁her", "▁red", "▁ball", "."]
SENTENCE = ("Once upon a time, there was a little girl named Mia. Mia had a red ball. One day, "
            "Mia lost her red ball.")

_lesson = {"number": 0}


def setup(number: int, title: str) -> argparse.Namespace:
    """Parse the lesson's command line and print its title. Unknown arguments (Jupyter passes
    some) are ignored."""
    _lesson["number"] = number
    p = argparse.ArgumentParser(description=f"minigrok lesson {number:02d}: {title}")
    p.add_argument("--checkpoint", help="folder holding ckpt-0/ (default: the built-in "
                   "trained model, written on first use)")
    p.add_argument("--tokenizer", help="path of Grok-1's tokenizer.model (default: "
                   "$MINIGROK_TOKENIZER, beside the checkpoint, the cache, or downloaded)")
    args, _ = p.parse_known_args()
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    print(f"lesson {number:02d}: {title}")
    return args


def load(args):
    """The model at ``--checkpoint`` (None: the built-in one). A bad path is one line."""
    try:
        return minigrok.load(args.checkpoint, tokenizer=args.tokenizer)
    except MinigrokError as e:
        sys.exit(f"minigrok: error: {e}")


def tokens_for(cfg) -> np.ndarray:
    """TOKENS as an int array, folded into the vocabulary of a smaller test checkpoint."""
    ids = np.array(TOKENS, dtype=np.int64)
    if ids.max() >= cfg.vocab_size:
        print(f"(this checkpoint's vocabulary has only {cfg.vocab_size} tokens: using the "
              f"fixed token ids modulo {cfg.vocab_size})")
        ids = ids % cfg.vocab_size
    return ids


def tokenizer_or_none(model):
    """The SentencePiece processor, or None (with one line saying why) when none is found."""
    try:
        return model.tokenizer
    except MinigrokError as e:
        print(f"(no tokenizer, so token ids stay numbers: {e})")
        return None


def figures_dir() -> Path:
    return Path(os.environ.get("MINIGROK_FIGURES") or LESSONS / "figures")


def save_figure(fig, name: str, measured: bool = False) -> Path:
    """Write ``NN_name.png`` (NN: this lesson) into figures_dir(), reproducibly; show it only
    when interactive. Written to a temporary file first, so a figure is never half-written.
    A ``measured`` figure (speeds of the machine at hand, different on every run) goes to
    figures_dir()/measured/, which git ignores: running the lessons changes no committed file."""
    folder = figures_dir() / "measured" if measured else figures_dir()
    out = folder / f"{_lesson['number']:02d}_{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    os.replace(tmp, out)
    print(f"figure: {out}")
    if interactive():
        plt.show()
    else:
        plt.close(fig)
    return out


def peek(label: str, x, n: int = 6):
    """One line about an array: shape, dtype, rms and its first values."""
    a = np.asarray(x)
    flat = a.reshape(-1)
    rms = float(np.sqrt(np.mean(flat.astype(np.float64) ** 2))) if flat.size and \
        a.dtype.kind in "fiu" else float("nan")
    first = np.array2string(flat[:n], precision=4, suppress_small=True)
    print(f"{label:<28} {a.dtype.name:<8} {str(list(a.shape)):<18} rms {rms:<10.4g} {first}")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def fmt_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f}{unit}"
    return f"{n:,.0f}"


def estimate(label: str, value: str):
    """An estimate from sizes and assumptions, labelled as such (never a measurement)."""
    print(f"estimate  {label:<52} {value}")


def measured(label: str, value: str):
    print(f"measured  {label:<52} {value}")


def moe_inputs(params, cfg, tokens) -> list:
    """The router's input at every layer, [L] x [T, D]: rms_norm_2 of the residual stream
    after the layer's attention. minigrok's decoder_layer does not return this midpoint, so
    the first half of each layer is written out here from minigrok's own pieces (lesson 10
    checks such a by-hand layer against decoder_layer); the stream then advances through
    decoder_layer itself."""
    from minigrok.reference.attention import attention
    from minigrok.reference.layer import decoder_layer
    from minigrok.reference.model import embed
    from minigrok.reference.rmsnorm import rms_norm

    keep = tokens > cfg.pad_token
    h = embed(params, cfg, tokens)
    xs = []
    for i, layer in enumerate(params["layers"]):
        a = attention(rms_norm(h, layer["rms_norm"]), **layer["multi_head_attention"],
                      num_q_heads=cfg.num_q_heads, num_kv_heads=cfg.num_kv_heads,
                      key_size=cfg.key_size, multiplier=cfg.attn_output_multiplier, keep=keep)
        xs.append(rms_norm(h + rms_norm(a, layer["rms_norm_1"]), layer["rms_norm_2"]))
        h = decoder_layer(h, layer, cfg, keep=keep, index=i)
    return xs


def labels(tokens) -> list:
    """Axis labels for ``tokens``: the sentence's pieces when they are TOKENS (or a prefix),
    else the ids themselves (a test checkpoint with a folded vocabulary)."""
    ids = [int(t) for t in tokens]
    if ids == TOKENS[:len(ids)]:
        return PIECES[:len(ids)]
    return [str(t) for t in ids]


# -- planted porting bugs (lessons 13 and 17) --------------------------------------------------

@contextlib.contextmanager
def patched(module, name, value):
    """Swap ``module.name`` for ``value`` inside the block: how a lesson plants a porting bug
    in minigrok's own forward (``patched(moe, "route", renormalised_route)``)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def renormalised_route(x, router, k, _route=route):
    """moe.route with the two gates divided by their sum (Mixtral-style routing code). The
    real route is bound here, once: inside the patch, moe.route is this function."""
    probs, ids, gates = _route(x, router, k)
    return probs, ids, gates / gates.sum(-1, keepdims=True)


def interleaved_rope(x, positions):
    """RoPE on pairs (2i, 2i+1) instead of Grok-1's (i, i + d/2): the same angles."""
    ang = rope_angles(positions, x.shape[-1])[:, None, : x.shape[-1] // 2]
    out = np.empty(x.shape, np.float32)
    out[..., 0::2] = x[..., 0::2] * np.cos(ang) - x[..., 1::2] * np.sin(ang)
    out[..., 1::2] = x[..., 0::2] * np.sin(ang) + x[..., 1::2] * np.cos(ang)
    return out
