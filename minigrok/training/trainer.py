"""``minigrok train``: the run that made the built-in model, resumable, with its loss curve.

    out/state.npz     parameters, AdamW moments, step and log: a killed run resumes from it
    out/loss.csv      step, lr, train loss, held-out loss, balance loss, tokens, seconds
    out/loss.png      the loss curve (when matplotlib is installed)
    out/model.npz     the trained model quantised into the release format, compact form
                      (formats/compact.py): what minigrok/data/storyteller.npz is
    out/checkpoint/   the same model in the official checkpoint format

Every file is written under a temporary name and renamed when complete (outputs.py).
The recipe below is the whole of what decides the result, with the seed.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import MinigrokError
from ..formats import compact
from ..formats.checkpoint import model_params
from ..formats.make_checkpoint import write_checkpoint
from ..outputs import is_npz, write_file
from ..reference.xp import to_numpy
from . import adamw, data, measures, release, stories
from .network import expert_load, heldout_loss, loss_and_grads
from .recipe import RECIPE, init_params, tree_from_leaves

STATE, LOG, CURVE, MODEL, CHECKPOINT, REPORT = ("state.npz", "loss.csv", "loss.png", "model.npz",
                                             "checkpoint", "train.json")
OURS = {STATE, LOG, CURVE, MODEL, CHECKPOINT, REPORT}
COLUMNS = ("step", "lr", "train_loss", "heldout_loss", "balance_loss", "tokens", "seconds")


def prepare_data(sp, recipe=RECIPE, seed: int = 0):
    """The token streams and the reduced vocabulary of a run: (train stream, train window
    starts, held-out inputs [W, T], held-out targets [W, T], vocab, reducer table)."""
    T, eos = recipe["seq_len"], recipe["config"].eos_token
    train, starts = data.encode_stories(
        sp, stories.corpus("train", recipe["train_stories"], seed), eos)
    # Twice as many held-out stories as windows: a window runs on into the next story.
    held, held_starts = data.encode_stories(
        sp, stories.corpus("heldout", 2 * recipe["heldout_windows"], seed), eos)
    vocab = data.reduced_vocabulary(train, eos)
    table = data.reducer(vocab, recipe["config"].vocab_size)
    rows = held[data.windows(held, held_starts, T)[:recipe["heldout_windows"], None] +
                np.arange(T + 1)]
    return train, data.windows(train, starts, T), rows[:, :-1], rows[:, 1:], vocab, table


PROMPTS = ("Once upon a time", "One day, Mia", "Long ago, there was a little dog named")


def learned_measures(params, cfg, sp, vocab, held_tokens, seed: int, length: int) -> dict:
    """The measures of measures.py on the released model (the reference's forward on the
    int8 weights and the full embedding): copying (random sequences, and the memory games'
    lists), words, the unseen ids' mass, and samples of ``length`` new tokens."""
    texts = [measures.sample(params, cfg, sp, p, length, temperature=t, seed=seed)
             for p in PROMPTS for t in (0.0, 0.8)]
    return {
        "copy_ratio": measures.copy_ratio(params, cfg, vocab[vocab > cfg.eos_token],
                                          np.random.default_rng([seed, 3])),
        "list_copy_ratio": measures.list_copy_ratio(params, cfg, sp,
                                                    stories.corpus("heldout", 400, seed)),
        "word_share": measures.word_share(texts, stories.words()),
        "unseen_mass": measures.unseen_mass(params, cfg, vocab, held_tokens),
        "samples": texts,
    }


def _check_out(out: Path, resume: bool, force: bool):
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise MinigrokError(f"{out}: exists and is not a folder")
    present = set(os.listdir(out)) if out.is_dir() else set()
    if resume:
        if STATE not in present:
            raise MinigrokError(f"{out}: nothing to resume (no {STATE}); drop --resume")
        return
    if present and not force:
        raise MinigrokError(f"{out}: not empty; pass --resume to continue its run or --force "
                            "to start again")
    if present - OURS:
        raise MinigrokError(f"{out}: holds files train did not write "
                            f"({', '.join(sorted(present - OURS)[:3])}); refusing to overwrite")


def train(out, sp, steps: int | None = None, seed: int = 0, xp=np, resume: bool = False,
          force: bool = False, recipe=RECIPE, report=sys.stderr) -> dict:
    """Train the recipe's model into ``out`` with tokenizer ``sp`` (numpy or cupy arrays:
    ``xp``); returns the final measures, also written to out/train.json."""
    out = Path(out)
    steps = recipe["steps"] if steps is None else steps
    if steps < 1:
        raise MinigrokError(f"--steps must be at least 1, got {steps}")
    _check_out(out, resume, force)
    out.mkdir(parents=True, exist_ok=True)
    cfg, B, T = recipe["config"], recipe["batch"], recipe["seq_len"]
    train_stream, starts, held_x, held_y, vocab, table = prepare_data(sp, recipe, seed)
    held_tokens = held_x[:4]                               # full ids, for unseen_mass
    unigram = data.unigram_loss(train_stream, held_y, cfg.vocab_size)
    held_x, held_y = xp.asarray(table[held_x]), xp.asarray(table[held_y])
    others = cfg.vocab_size - len(vocab)
    if resume:
        params, state, log, meta = _load_state(out / STATE, xp)
        if meta["seed"] != seed or meta["vocab"] != len(vocab):
            raise MinigrokError(f"{out / STATE}: made with seed {meta['seed']} and "
                                f"{meta['vocab']} vocabulary rows, not seed {seed} and "
                                f"{len(vocab)}")
    else:
        params = init_params(cfg, len(vocab) + 1, np.random.default_rng([seed, 1]), xp)
        state, log = adamw.init_state(params), []
    start, t0 = state["step"], time.monotonic() - (log[-1][-1] if log else 0.0)
    tokens = start * B * T
    for i in range(start, steps):
        rng = np.random.default_rng([seed, 2, i])        # the batch of step i, resumable
        x, y = data.batch(train_stream, starts, rng, B, T)
        x, y = xp.asarray(table[x]), xp.asarray(table[y])
        lr = adamw.schedule(i, steps, recipe["lr"], recipe["warmup"])
        loss, stats, grads = loss_and_grads(params, cfg, x, y, others, recipe["balance"])
        adamw.step(params, grads, state, lr, recipe["weight_decay"])
        tokens += B * T
        done = i + 1
        held = None
        if done % recipe["eval_every"] == 0 or done == steps:
            held = heldout_loss(params, cfg, held_x, held_y, others, B)
        log.append((done, lr, stats["ce"], held, stats["balance"], tokens,
                    time.monotonic() - t0))
        _progress(report, log, steps, start)
        if done % recipe["checkpoint_every"] == 0 or done == steps:
            _save_state(out, params, state, log, {"seed": seed, "vocab": len(vocab)})
    if report:
        print(file=report)
    result = release.release(params, cfg, held_x, held_y, others, B)
    write_file(out / MODEL, lambda f: compact.save(f, cfg, vocab, result["tensors"]),
               force=True, recognise=is_npz)
    full = compact.expand(cfg, vocab, result["tensors"])
    write_checkpoint(out / CHECKPOINT, cfg, full, force=True)
    learned = learned_measures(model_params(full, cfg.num_layers), cfg, sp, vocab,
                               held_tokens, seed, recipe["sample_tokens"])
    seconds = log[-1][-1]
    measures = {
        "steps": steps, "tokens": tokens, "seconds": round(seconds, 1),
        # the rate of the whole run (a resumed run's wall clock continues the killed one's)
        "tokens_per_second": round(tokens / max(1e-9, seconds), 1),
        "heldout_loss": result["heldout_loss"],
        "heldout_loss_int8": result["heldout_loss_int8"],
        "unigram_loss": unigram,
        "expert_load": to_numpy(expert_load(params, cfg, held_x[:B])).round(3).tolist(),
        "vocab_rows": len(vocab) + 1,
        "model_npz_bytes": (out / MODEL).stat().st_size,
        **learned,
    }
    write_file(out / REPORT, lambda f: f.write(json.dumps(measures, indent=1).encode()),
               force=True)
    return measures


def _progress(report, log, steps: int, start: int):
    if not report:
        return
    done, _, loss, _, _, tokens, seconds = log[-1]
    held = next((r[3] for r in reversed(log) if r[3] is not None), None)
    first = log[start - 1] if start else (0, 0, 0, 0, 0, 0, 0.0)
    rate = (tokens - first[5]) / max(1e-9, seconds - first[6])
    eta = (steps - done) * (seconds - first[6]) / max(1, done - start)
    line = (f"step {done}/{steps}  loss {loss:.3f}" +
            (f"  held-out {held:.3f}" if held is not None else "") +
            f"  {rate:,.0f} tok/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    end = "\r" if getattr(report, "isatty", lambda: False)() and done < steps else "\n"
    if end == "\n" and done % 10 and done < steps:
        return                                   # not a terminal: a line every 10 steps
    print(line.ljust(78), end=end, file=report, flush=True)


def _save_state(out: Path, params, state, log, meta):
    arrays = {"param/" + n: to_numpy(p) for n, p in adamw.leaves(params)}
    arrays.update({k: to_numpy(v) for k, v in state.items() if k != "step"})
    arrays["step"] = np.array(state["step"])
    arrays["log"] = np.array([[np.nan if v is None else v for v in row] for row in log])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_file(out / STATE, lambda f: np.savez(f, **arrays), force=True, recognise=is_npz)
    lines = [",".join(COLUMNS)] + [",".join("" if v is None else f"{v:.6g}" for v in row)
                                   for row in log]
    write_file(out / LOG, lambda f: f.write(("\n".join(lines) + "\n").encode()), force=True)
    plot_curve(log, out / CURVE)


def _load_state(path: Path, xp):
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MinigrokError(f"{path}: not a training state ({e})") from None
    with z:
        meta = json.loads(bytes(z["meta"]).decode())
        params = tree_from_leaves({k[6:]: xp.asarray(z[k]) for k in z.files
                                   if k.startswith("param/")})
        state = {k: xp.asarray(z[k]) for k in z.files if k[:2] in ("m/", "v/")}
        state["step"] = int(z["step"])
        log = [tuple(None if math.isnan(v) else v for v in row) for row in z["log"].tolist()]
        log = [(int(r[0]), *r[1:5], int(r[5]), r[6]) for r in log]
    return params, state, log, meta


def plot_curve(log, path):
    """The loss curve (training loss per step, held-out loss where measured) as a PNG, with
    fixed metadata so the same run makes the same bytes. Skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = [r[0] for r in log]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [r[2] for r in log], lw=0.8, label="training batch")
    held = [(r[0], r[3]) for r in log if r[3] is not None]
    if held:
        ax.plot(*zip(*held), "o-", ms=3, label="held-out")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", yscale="log")
    ax.legend()
    fig.tight_layout()
    write_file(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}),
               force=True)
    plt.close(fig)
