"""Training (minigrok/training/): every backward pass against finite differences, every
training forward against the reference's, the reduced vocabulary against the full softmax.

Gradient checks run in float64 with hypothesis drawing the inputs. Each compares the
directional derivative of a scalar loss L = sum(out * R) (R random) along a random
direction U of every input at once: the central difference (L(x + eU) - L(x - eU)) / 2e
against sum(grad * U). With e = 1e-5 the difference's truncation error is O(e^2) ~ 1e-10
of the function's third derivative and its rounding error ~ 1e-16 |L| / e ~ 1e-11 |L|:
a tolerance of 1e-6 relative to the size of the terms is far above both and far below
any real mistake (a missing factor or transposed term is an O(1) error).
"""

import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minigrok.errors import MinigrokError
from minigrok.formats import compact
from minigrok.formats.checkpoint import open_checkpoint
from minigrok.formats.tokenizer import load_tokenizer
from minigrok.reference import attention as ref_attention
from minigrok.reference import moe as ref_moe
from minigrok.reference.config import Config
from minigrok.reference.model import forward
from minigrok.reference.quant import QuantizedWeight8bit
from minigrok.reference.rmsnorm import rms_norm
from minigrok.reference.rope import apply_rope
from minigrok.training import gradients as gr
from minigrok.training.network import log_softmax_full, logits_forward, loss_and_grads
from minigrok.training.recipe import RECIPE, init_params
from minigrok.training.trainer import COLUMNS, STATE, train
from testutil import REPO, run_cli, tokenizer_path

CHECK = settings(max_examples=25, deadline=None)
EPS = 1e-5


def directional(f, inputs: dict, grads: dict, rng):
    """(finite difference, analytic) of f along one random direction of every input."""
    dirs = {k: rng.standard_normal(np.shape(v)) for k, v in inputs.items()}
    plus = f(**{k: v + EPS * dirs[k] for k, v in inputs.items()})
    minus = f(**{k: v - EPS * dirs[k] for k, v in inputs.items()})
    numeric = (plus - minus) / (2 * EPS)
    analytic = sum(float((grads[k] * dirs[k]).sum()) for k in inputs)
    return numeric, analytic


def assert_close(numeric, analytic, scale):
    assert abs(numeric - analytic) <= 1e-6 * (abs(numeric) + abs(analytic) + scale), \
        (numeric, analytic)


seeds = st.integers(0, 2**32 - 1)


@CHECK
@given(seed=seeds, rows=st.integers(1, 6), width=st.integers(2, 24))
def test_rms_norm_backward(seed, rows, width):
    rng = np.random.default_rng(seed)
    x, s = rng.standard_normal((rows, width)), rng.standard_normal(width)
    R = rng.standard_normal((rows, width))
    y, cache = gr.rms_norm_forward(x, s)
    dx, ds = gr.rms_norm_backward(R, s, cache)
    num, ana = directional(lambda x, s: (gr.rms_norm_forward(x, s)[0] * R).sum(),
                           {"x": x, "s": s}, {"x": dx, "s": ds}, rng)
    assert_close(num, ana, np.abs(R).sum())


@CHECK
@given(seed=seeds, T=st.integers(1, 9), heads=st.integers(1, 3), half=st.integers(1, 8))
def test_rope_backward(seed, T, heads, half):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, T, heads, 2 * half))
    cos, sin = gr.rope_tables(T, 2 * half, np, np.float64)
    R = rng.standard_normal(x.shape)
    num, ana = directional(lambda x: (gr.rope_forward(x, cos, sin) * R).sum(), {"x": x},
                           {"x": gr.rope_backward(R, cos, sin)}, rng)
    assert_close(num, ana, np.abs(R).sum())


def _attention_case(rng, B, T, K, G, d, D):
    H = K * G
    w = {"query": rng.standard_normal((D, H * d)), "key": rng.standard_normal((D, K * d)),
         "value": rng.standard_normal((D, K * d)), "linear": rng.standard_normal((H * d, D))}
    shape = dict(num_q_heads=H, num_kv_heads=K, key_size=d, multiplier=1 / math.sqrt(d))
    return w, shape


@CHECK
@given(seed=seeds, B=st.integers(1, 2), T=st.integers(1, 7), K=st.integers(1, 3),
       G=st.integers(1, 3), half=st.integers(1, 3), pads=st.integers(0, 3),
       big=st.booleans())
def test_attention_backward(seed, B, T, K, G, half, pads, big):
    """Soft-capped GQA with the pad mask, pad tokens anywhere (a query with no key in
    sight included); ``big`` scales the weights so that the cap is deep in its curve."""
    rng = np.random.default_rng(seed)
    D, d = 8, 2 * half
    w, shape = _attention_case(rng, B, T, K, G, d, D)
    if big:
        w = {k: v * 4 for k, v in w.items()}
    x = rng.standard_normal((B, T, D))
    keep = np.ones((B, T), dtype=bool)
    keep[:, rng.integers(0, T, size=pads)] = False
    out, cache = gr.attention_forward(x, **w, **shape, keep=keep)
    R = rng.standard_normal(out.shape)
    dx, dw = gr.attention_backward(R, **w, cache=cache)

    def f(x, **w):
        return (gr.attention_forward(x, **w, **shape, keep=keep)[0] * R).sum()

    num, ana = directional(f, {"x": x, **w}, {"x": dx, **dw}, rng)
    assert_close(num, ana, np.abs(R).sum())


@CHECK
@given(seed=seeds, n=st.integers(1, 40), scale=st.floats(0.1, 4))
def test_gelu_backward(seed, n, scale):
    rng = np.random.default_rng(seed)
    a, R = rng.standard_normal(n) * scale, rng.standard_normal(n)
    g, t = gr.gelu_forward(a)
    num, ana = directional(lambda a: (gr.gelu_forward(a)[0] * R).sum(), {"a": a},
                           {"a": gr.gelu_backward(R, a, t)}, rng)
    assert_close(num, ana, np.abs(R).sum())


def _moe_case(rng, N, D, F, E=8):
    return (rng.standard_normal((N, D)), rng.standard_normal((D, E)),
            {"linear": rng.standard_normal((E, D, F)) / math.sqrt(D),
             "linear_v": rng.standard_normal((E, D, F)) / math.sqrt(D),
             "linear_1": rng.standard_normal((E, F, D)) / math.sqrt(F)})


@CHECK
@given(seed=seeds, N=st.integers(1, 12), F=st.integers(1, 6), k=st.integers(1, 3),
       balance=st.sampled_from([0.0, 0.5]))
def test_moe_backward(seed, N, F, k, balance):
    """Router softmax, top-k gates (not renormalised), tanh-GELU experts, and the
    load-balancing loss's gradient on the router probabilities."""
    rng = np.random.default_rng(seed)
    x, router, w = _moe_case(rng, N, 6, F)
    out, cache = gr.moe_forward(x, router, **w, num_selected=k)
    # The top-k choice is piecewise constant: a step of EPS must not cross a tie.
    ordered = np.sort(cache["probs"], axis=-1)[:, ::-1]
    assume(np.all(ordered[:, k - 1] - ordered[:, k] > 1e-3))
    R = rng.standard_normal(out.shape)
    aux, daux = gr.balance_loss(cache["probs"], cache["ids"], 8)
    dx, dw = gr.moe_backward(R, router, **w, cache=cache, dprobs_extra=balance * daux)

    def f(x, router, **w):
        out, c = gr.moe_forward(x, router, **w, num_selected=k)
        np.testing.assert_array_equal(c["ids"], cache["ids"])    # the same choice
        return (out * R).sum() + balance * gr.balance_loss(c["probs"], cache["ids"], 8)[0]

    num, ana = directional(f, {"x": x, "router": router, **w}, {"x": dx, **dw}, rng)
    assert_close(num, ana, np.abs(R).sum())


def tiny_config(**changes) -> Config:
    """Grok-1's structure at toy size (8 experts, top-2, GQA 4:2)."""
    return dataclasses.replace(Config(
        vocab_size=40, emb_size=16, key_size=4, num_q_heads=4, num_kv_heads=2, num_layers=2,
        widening_factor=1.0, attn_output_multiplier=0.5, embedding_multiplier_scale=4.0,
        output_multiplier_scale=0.577), **changes)


def float64(tree):
    if isinstance(tree, dict):
        return {k: float64(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [float64(v) for v in tree]
    return np.asarray(tree, dtype=np.float64)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, B=st.integers(1, 2), T=st.integers(2, 6), balance=st.sampled_from([0.0, 0.1]))
def test_whole_model_backward(seed, B, T, balance):
    """Embedding with its multiplier, the layers with their sandwich norms, the final norm,
    the tied unembedding with its multiplier, and the cross-entropy over the full
    vocabulary (the shared row standing for 30 unseen ids)."""
    rng = np.random.default_rng(seed)
    cfg = tiny_config()
    params = float64(init_params(cfg, 11, rng))
    for layer in params["layers"]:                  # norm scales away from 1, a livelier router
        for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            layer[n] = layer[n] + 0.2 * rng.standard_normal(layer[n].shape)
        layer["router"] = layer["router"] * 30
    x, y = rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))
    loss, _, grads = loss_and_grads(params, cfg, x, y, others=30, balance=balance)
    from minigrok.training.adamw import leaves
    from minigrok.training.recipe import tree_from_leaves
    flat, gflat = dict(leaves(params)), dict(leaves(grads))
    ids = [logits_forward(params, cfg, x)[1][1][i][4]["ids"] for i in range(cfg.num_layers)]

    def f(**flat):
        tree = tree_from_leaves(flat)
        got = [logits_forward(tree, cfg, x)[1][1][i][4]["ids"] for i in range(cfg.num_layers)]
        assume(all(np.array_equal(a, b) for a, b in zip(got, ids)))
        return loss_and_grads(tree, cfg, x, y, others=30, balance=balance)[0]

    num, ana = directional(f, flat, gflat, rng)
    assert_close(num, ana, abs(loss))


@given(seed=seeds, others=st.integers(1, 10**6))
@CHECK
def test_the_shared_row_is_the_full_softmax(seed, others):
    """log_softmax_full over V' columns == log_softmax over the expanded vocabulary, where
    the last column is repeated ``others`` times (checked by explicit expansion, small)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((3, 5)) * 5
    got = log_softmax_full(logits, others)
    reps = min(others, 50)
    full = np.concatenate([logits[:, :-1]] + [logits[:, -1:]] * reps, axis=1)
    want = full - np.log(np.exp(full).sum(axis=1, keepdims=True) +
                         (others - reps) * np.exp(logits[:, -1:]))
    np.testing.assert_allclose(got, want[:, :5], rtol=1e-12, atol=1e-12)


# -- the training forward is the reference forward ------------------------------------------

def test_components_equal_the_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 16)).astype(np.float32)
    s = rng.standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(gr.rms_norm_forward(x, s)[0], rms_norm(x, s), rtol=2e-6,
                               atol=1e-6)
    cos, sin = gr.rope_tables(7, 8, np, np.float32)
    h = rng.standard_normal((2, 7, 3, 8)).astype(np.float32)
    for b in range(2):
        np.testing.assert_allclose(gr.rope_forward(h, cos, sin)[b], apply_rope(h[b], np.arange(7)),
                                   rtol=1e-6, atol=1e-6)
    w, shape = _attention_case(rng, 2, 7, 2, 3, 4, 16)
    w = {k: (v / 3).astype(np.float32) for k, v in w.items()}
    keep = np.array([[True] * 7, [False, True, True, False, True, True, True]])
    out = gr.attention_forward(x, **w, **shape, keep=keep)[0]
    for b in range(2):
        want = ref_attention.attention(x[b], **w, **shape, keep=keep[b])
        np.testing.assert_allclose(out[b], want, rtol=1e-5, atol=1e-5)
    xm, router, wm = _moe_case(rng, 9, 16, 5)
    xm, router = xm.astype(np.float32), router.astype(np.float32)
    wm = {k: v.astype(np.float32) for k, v in wm.items()}
    got, cache = gr.moe_forward(xm, router, **wm, num_selected=2)
    want, probs, ids, gates = ref_moe.moe(xm, router, **wm, num_selected=2)
    np.testing.assert_array_equal(cache["ids"], ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_training_logits_are_the_reference_forward_on_the_expanded_model():
    """The model trained over V' rows is the reference model with every unseen id on the
    shared row: its logits over all vocab_size ids are the training logits, the shared
    column repeated."""
    cfg = tiny_config(vocab_size=50)
    rng = np.random.default_rng(5)
    vocab = np.array([2, 3, 7, 11, 19, 23, 31, 40, 41, 47])                  # V' - 1 = 10
    params = init_params(cfg, len(vocab) + 1, rng)
    tokens = vocab[rng.integers(0, len(vocab), (2, 6))]
    table = np.full(cfg.vocab_size, len(vocab))
    table[vocab] = np.arange(len(vocab))
    logits = logits_forward(params, cfg, table[tokens])[0].reshape(2, 6, -1)
    full = {**params, "in_out_embed": params["in_out_embed"][table]}
    for b in range(2):
        want = forward(full, cfg, tokens[b])                                   # [T, 50]
        np.testing.assert_allclose(want[:, vocab], logits[b, :, :-1], rtol=2e-5, atol=2e-5)
        unseen = np.setdiff1d(np.arange(50), vocab)
        np.testing.assert_allclose(want[:, unseen], np.repeat(logits[b, :, -1:], len(unseen), 1),
                                   rtol=2e-5, atol=2e-5)


# -- the trainer ------------------------------------------------------------------------------

SMALL = dict(RECIPE, train_stories=300, heldout_windows=4, batch=2, seq_len=32, eval_every=2,
             checkpoint_every=2, sample_tokens=4)


class Killed(io.StringIO):
    """A terminal whose user presses Ctrl-C when step ``at`` is reported."""

    def __init__(self, at: str):
        super().__init__()
        self.at = at

    def isatty(self):
        return True

    def write(self, text):
        if self.at in text:
            raise KeyboardInterrupt
        return super().write(text)


@pytest.fixture(scope="module")
def sp():
    return load_tokenizer(tokenizer_path())


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, sp):
    out = tmp_path_factory.mktemp("train") / "run"
    return out, train(out, sp, steps=6, recipe=SMALL, report=None)


def _state(out):
    with np.load(out / STATE) as z:
        return {k: z[k] for k in z.files}


def test_a_killed_run_resumes_to_the_same_model(whole_run, tmp_path, sp):
    """Killed at step 5 (its last state saved at step 4), resumed: the same parameters,
    moments and losses as the run that was never interrupted."""
    out, _ = whole_run
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run", sp, steps=6, recipe=SMALL, report=Killed("step 5/6"))
    assert int(_state(tmp_path / "run")["step"]) == 4
    train(tmp_path / "run", sp, steps=6, recipe=SMALL, resume=True, report=None)
    a, b = _state(out), _state(tmp_path / "run")
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "log":      # its last column is the wall clock
            np.testing.assert_allclose(a[k][:, :-1], b[k][:, :-1], rtol=1e-6)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_a_run_writes_its_curve_model_and_checkpoint(whole_run):
    out, m = whole_run
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0].split(",") == list(COLUMNS) and len(rows) == 7
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    cfg, vocab, tensors = compact.load(out / "model.npz")
    ck = open_checkpoint(out / "checkpoint")
    for name, t in compact.expand(cfg, vocab, tensors).items():
        got = ck.params[name]
        if isinstance(t, QuantizedWeight8bit):
            np.testing.assert_array_equal(got.weight, t.weight)
            np.testing.assert_array_equal(np.asarray(got.scales).view(np.uint16), t.scales)
        else:
            np.testing.assert_array_equal(got, t)
    # the loss went down, and the release costs little of it
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert losses[-1] < losses[0]
    assert abs(m["heldout_loss_int8"] - m["heldout_loss"]) < 0.05 * m["heldout_loss"]
    assert json.loads((out / "train.json").read_text())["steps"] == 6


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--resume"], "nothing to resume"),
    (["--device", "cuda:0,1"], "train runs on one device"),
    (["--seed", "-1"], "a whole number >= 0"),
])
def test_bad_train_arguments_are_one_line(tmp_path, args, message):
    r = run_cli("train", "--out", tmp_path / "run", *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_train_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = run_cli("train", "--out", tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("train", "--out", tmp_path, "--force")
    assert r.returncode == 2 and "notes.txt" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_full_disk_is_one_error_and_leaves_no_partial_file(tmp_path, sp, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(MinigrokError) as e:
        train(tmp_path / "run", sp, steps=2, recipe=SMALL, report=None)
    assert "state.npz" in str(e.value) and "No space left" in str(e.value)
    assert "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_training_runs_on_cupy_arrays_simulated(tmp_path):
    """`train --device cuda`'s arrays, on the simulated CuPy (tests/simcupy: numpy arrays that
    refuse to be mixed with host arrays, as a GPU's do): no host array slips into the step,
    the evaluation, the release or the state. (A real GPU run is measured where one is
    available; see the README.)"""
    script = f"""
import cupy, json
from minigrok.formats.tokenizer import load_tokenizer
from minigrok.training.trainer import train
from test_training import SMALL
m = train({str(tmp_path / 'run')!r}, load_tokenizer({str(tokenizer_path())!r}), steps=3,
          xp=cupy, recipe=SMALL, report=None)
print(json.dumps([m["heldout_loss"], m["vocab_rows"]]))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests" / "simcupy"), str(REPO), str(REPO / "tests")]))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loss, rows = json.loads(r.stdout.splitlines()[-1])
    assert math.isfinite(loss) and rows > 100
