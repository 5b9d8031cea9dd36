"""The exercises encode_prompt, decode, checkpoint_order, embed_unembed, decoder_layer,
greedy_generate, rmsnorm_backward and softcap_attention_backward: what their graders build
for themselves holds to minigrok's real code.

The generic checks (the stub fails with "not implemented yet", the reference passes, every
listed mistake fails with its hint) run for every exercise in tests/test_lessons.py. Here:
the grader's own copies of things it may not import (the checkpoint's file order, the
tokenizer's decode) against minigrok/formats on the real names and the real tokenizer, the
grader's tiny tokenizer and tiny model, and a student's correct file passing through the
child process.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minigrok import exercises
from minigrok.exercises import backward, checkpoint_files, model, tokens
from minigrok.formats import checkpoint, tokenizer
from minigrok.reference.config import preset
from minigrok.reference.generate import generate_tokens
from minigrok.reference.rmsnorm import rms_norm

from testutil import tokenizer_path

NEW = ["encode_prompt", "decode", "checkpoint_order", "embed_unembed", "decoder_layer",
       "greedy_generate", "rmsnorm_backward", "softcap_attention_backward"]


def test_registered_in_teaching_order():
    names = exercises.names()
    assert all(n in names for n in NEW)
    lesson = [exercises.get(n).lesson[:2] for n in names]
    assert names[:4] == ["encode_prompt", "decode", "checkpoint_order", "embed_unembed"]
    assert names.index("decoder_layer") == names.index("expert_ffn") + 1
    assert names[-3] == "greedy_generate" and lesson[-3] == "12"
    assert names[-2:] == ["rmsnorm_backward", "softcap_attention_backward"]
    assert lesson[-2:] == ["16", "16"]


@pytest.mark.parametrize("name", NEW)
def test_stub_is_shipped_twice_identically(name):
    stub = exercises.stub_path(name)
    shipped = stub.parents[2] / "minigrok" / "exercises" / "stubs" / f"{name}.py"
    if shipped.parent.is_dir():
        assert shipped.read_bytes() == stub.read_bytes()


# ------------------------------------------------------------------ checkpoint_order

@pytest.mark.parametrize("num_layers", [1, 2, 3, 10, 11, 12, 20, 64])
def test_checkpoint_order_reference_is_the_checkpoints_file_order(num_layers):
    names = checkpoint_files.model_names(num_layers)
    specs = checkpoint.tensor_specs(dataclasses.replace(preset("tiny"), num_layers=num_layers))
    assert sorted(names) == sorted(s.name for s in specs)             # the same 2 + 12 L names
    order = checkpoint_files.file_order(np.array(names))
    assert [names[i] for i in order] == [s.name for s in specs]       # in the same file order
    assert checkpoint_files.EMBEDDINGS == checkpoint.EMBEDDINGS
    assert checkpoint_files.FINAL_NORM == checkpoint.FINAL_NORM


def test_checkpoint_order_headline_mistake_differs_only_from_eleven_layers():
    numeric = checkpoint_files.CHECKPOINT_ORDER.mistakes[0].fn
    for num_layers in (1, 10, 11, 64):
        names = np.array(checkpoint_files.model_names(num_layers))
        same = np.array_equal(numeric(names), checkpoint_files.file_order(names))
        assert same == (num_layers <= 10)


# ------------------------------------------------------------------ the tokenizer exercises

@pytest.fixture(scope="module")
def real_sp():
    return tokenizer.load_tokenizer(tokenizer_path())


TEXTS = ["Hello world", " Hello", "  two spaces", "I ❤ 🦊 2024", "é中𝔘 ü",
         "line\n\nbreak", "", "Grok-1 has 314B parameters.", "[BOS] is not a token here"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_reference_is_sentencepieces_decode(real_sp, text):
    ids = tokenizer.encode(real_sp, text)
    assert tokens.decode_text(real_sp, ids) == tokenizer.decode(real_sp, ids) == text
    # a tail of the ids (generated text), with control tokens around it
    for cut in range(len(ids)):
        tail = [1] + ids[cut:] + [2, 0]
        assert tokens.decode_text(real_sp, tail) == tokenizer.decode(real_sp, tail)


@pytest.mark.parametrize("pieces", [["<0xF0>", "<0x9F>", "<0xA6>"],            # cut short
                                    ["<0xF0>", "▁hi", "<0x8A>"],               # split run
                                    ["<0xC3>", "<0xA9>", "<0xFF>", "<0xA9>"],  # invalid byte
                                    ["▁", "▁world"], ["<0x41>", "▁world"],
                                    ["[EOS]", "<0x20>", "▁x"], ["▁hi", "[BOS]", "▁there"],
                                    ["[UNK]", "▁hi"]])
def test_decode_reference_on_odd_pieces(real_sp, pieces):
    ids = [real_sp.piece_to_id(p) for p in pieces]
    assert tokens.decode_text(real_sp, ids) == real_sp.decode(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_prompt_reference_is_minigroks_encode(real_sp, text):
    ids = tokenizer.encode(real_sp, text)
    ref = tokens.ENCODE_PROMPT.reference
    assert ref(real_sp, text, 10_000).tolist() == ids
    assert ref(real_sp, text, 3).tolist() == ids[-3:]


def test_the_tiny_tokenizer_is_laid_out_like_grok1s(real_sp):
    tiny = tokens.TinySentencePiece()
    for i in range(3):
        assert tiny.id_to_piece(i) == real_sp.id_to_piece(i) and tiny.is_control(i)
    assert (tiny.bos_id(), tiny.eos_id(), tiny.pad_id()) == \
        (real_sp.bos_id(), real_sp.eos_id(), real_sp.pad_id())
    assert sum(tiny.is_byte(i) for i in range(tiny.get_piece_size())) == 256
    # the same shapes of encoding: dummy prefix, '▁▁' for a leading space, byte fallback
    # with its own '▁' piece, one digit per piece
    for text, want in [(" Hello", ["▁▁", "Hello"]),
                       ("I ❤", ["▁I", "▁", "<0xE2>", "<0x9D>", "<0xA4>"]),
                       ("2024", ["▁", "2", "0", "2", "4"])]:
        assert tiny.encode(text, out_type=str) == want
        assert [real_sp.id_to_piece(i) for i in real_sp.encode(text)][-len(want):] == want


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.sampled_from(tokens.FRAGMENTS + ("[PAD]", "<0x41>", "  ")), max_size=10)
       .map("".join))
def test_the_tiny_tokenizer_round_trips(text):
    tiny = tokens.TinySentencePiece()
    ids = tiny.encode(text)
    assert tokens.decode_text(tiny, ids) == text
    assert not any(tiny.is_control(i) for i in ids)
    assert tiny.encode(text, add_bos=True) == [1] + ids


# ------------------------------------------------------------------ the model exercises

def test_decoder_layer_reference_is_the_sandwich():
    case = model._layer_example()
    h, s, attn, moe = case["h"], case["scales"], case["attention"], case["moe"]
    h1 = h + rms_norm(attn(rms_norm(h, s[0])), s[1])
    want = h1 + rms_norm(moe(rms_norm(h1, s[2])), s[3])
    got = model.DECODER_LAYER.reference(h, s, case["rms_norm"], attn, moe)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and a block scaled 100x is the same block with its last projection scaled
    big = model.scaled(attn, 100.0)
    x = rms_norm(h, s[0])
    np.testing.assert_allclose(big(x), attn(x) * 100, rtol=1e-4, atol=1e-4)
    assert attn.params["linear"] is not big.params["linear"]            # the original is kept


def test_tiny_grok_is_minigroks_forward_and_moves_on():
    forward = model.TinyGrok(1)
    prompt = [5, 17, 30, 11]
    new = list(generate_tokens(forward.params, forward.cfg, prompt, max_new_tokens=8))
    seq = list(prompt)
    for t in new:                                                      # greedy, no cache
        assert t == int(np.argmax(forward(np.array(seq))[-1]))
        seq.append(t)
    assert len(set(new)) >= 4                                          # not one token repeated
    with pytest.raises(ValueError, match="outside the vocabulary"):
        forward(np.array([40]))


def test_greedy_example_stops_at_eos_before_the_limit():
    case = model._gen_example()
    out = model.GREEDY_GENERATE.reference(**case)
    assert out[-1] == case["eos_token"] and len(out) < case["max_new_tokens"]


# ------------------------------------------------------------------ a student's right answers

SOLUTIONS = {
    "encode_prompt": """
import numpy as np
def encode_prompt(sp, prompt, max_tokens):
    return np.array(sp.encode(prompt)[-max_tokens:], dtype=np.int64)
""",
    "decode": """
import numpy as np
def decode(sp, ids):
    text, run, first = "", b"", True
    for i in ids:
        if sp.is_control(i):
            continue
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            run += bytes([int(piece[3:5], 16)])
            first = False
            continue
        text, run = text + run.decode("utf-8", "replace"), b""
        if first and piece.startswith("\u2581"):
            piece = piece[1:]
        first = False
        text += piece.replace("\u2581", " ")
    return codepoints(text + run.decode("utf-8", "replace"))
def codepoints(text):
    return np.array([ord(c) for c in text], dtype=np.int64)
""",
    "checkpoint_order": """
import numpy as np
def checkpoint_order(names):
    return np.argsort(names, kind="stable")
""",
    "embed_unembed": """
def embed_unembed(embeddings, tokens, h, embedding_multiplier_scale, output_multiplier_scale):
    return (embeddings[tokens] * embedding_multiplier_scale,
            h @ embeddings.T * output_multiplier_scale)
""",
    "decoder_layer": """
def decoder_layer(h, scales, rms_norm, attention, moe):
    h = h + rms_norm(attention(rms_norm(h, scales[0])), scales[1])
    return h + rms_norm(moe(rms_norm(h, scales[2])), scales[3])
""",
    "greedy_generate": """
import numpy as np
def greedy_generate(forward, prompt, max_new_tokens, eos_token):
    seq, new = list(prompt), []
    while len(new) < max_new_tokens:
        token = int(np.argmax(forward(np.array(seq))[-1]))
        new.append(token)
        seq.append(token)
        if token == eos_token:
            break
    return np.array(new, dtype=np.int64)
""",
    # written as a student would: the chain rule step by step, not minigrok's formula
    "rmsnorm_backward": """
import numpy as np
def rms_norm_backward(x, scale, grad, eps=1e-5):
    D = x.shape[-1]
    ms = (x * x).mean(-1, keepdims=True) + eps
    r = ms ** -0.5
    dxn = grad * scale
    dr = (dxn * x).sum(-1, keepdims=True)
    dms = dr * -0.5 * ms ** -1.5
    return dxn * r + dms * 2 * x / D, (grad * x * r).sum(0)
""",
    "softcap_attention_backward": """
import numpy as np
def attention_backward(q, k, v, keep, offset, multiplier, grad):
    T, K, G, d = q.shape
    S = k.shape[0]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for h in range(K):
        for g in range(G):
            for t in range(T):
                raw = q[t, h, g] @ k[:, h].T * multiplier
                s = 30 * np.tanh(raw / 30)
                ok = (np.arange(S) <= offset + t) & keep
                s = np.where(ok, s, -1e30)
                p = np.exp(s - s.max())
                p /= p.sum()
                dv[:, h] += np.outer(p, grad[t, h, g])
                dp = v[:, h] @ grad[t, h, g]
                ds = p * (dp - p @ dp)
                ds = np.where(ok, ds * (1 - np.tanh(raw / 30) ** 2), 0) * multiplier
                dq[t, h, g] = ds @ k[:, h]
                dk[:, h] += np.outer(ds, q[t, h, g])
    return dq, dk, dv
""",
}


@pytest.mark.parametrize("name", NEW)
def test_a_right_answer_passes_in_the_child_process(name, tmp_path):
    student = tmp_path / f"{name}.py"
    student.write_text(SOLUTIONS[name])
    out = []
    assert exercises.check(name, path=student, write=out.append), "\n".join(out)
    assert out[-1].startswith("PASSED")


def test_feedback_is_the_same_on_every_run():
    mistake = exercises.get("decoder_layer").mistakes[0].fn
    runs = []
    for _ in range(2):
        out = []
        exercises.check("decoder_layer", mistake, write=out.append)
        runs.append(out)
    assert runs[0] == runs[1]
    assert not any("0x7f" in line or " at 0x" in line for line in runs[0])


# ------------------------------------------------------------------ the backward passes

@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 4), D=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_rmsnorm_backward_model_answer_is_the_training_codes(T, D, seed):
    from minigrok.training import gradients

    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    scale = rng.standard_normal(D)
    dx, dscale = gradients.rms_norm_backward(g, scale, gradients.rms_norm_forward(x, scale)[1])
    mine = backward._rms_backward(x, scale, g)
    # the model answer rounds to float32 at the end: within float32's rounding of float64
    np.testing.assert_allclose(mine[0], dx, rtol=1e-6, atol=1e-6 * np.abs(dx).max())
    np.testing.assert_allclose(mine[1], dscale, rtol=1e-6, atol=1e-6 * np.abs(dscale).max())


@settings(max_examples=25, deadline=None)
@given(case=backward._attnb_cases(st, hnp))
def test_softcap_attention_backward_model_answer_is_the_derivative(case):
    # Every component of the gradient, against a central difference of the reference's
    # forward in float64 (not only along one direction, as the grader checks a student).
    c = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
         for k, v in case.items()}
    grads = backward._attention_backward(c["q"], c["k"], c["v"], c["keep"], c["offset"],
                                         c["multiplier"], c["grad"])

    def loss(**moved):
        a = {**c, **moved}
        return float((backward._context64(a["q"], a["k"], a["v"], a["keep"], a["offset"],
                                          a["multiplier"]) * a["grad"]).sum())
    h = 1e-6
    for name, got in zip(("q", "k", "v"), grads):
        for i in np.ndindex(c[name].shape):
            up, down = c[name].copy(), c[name].copy()
            up[i] += h
            down[i] -= h
            numeric = (loss(**{name: up}) - loss(**{name: down})) / (2 * h)
            assert abs(got[i] - numeric) <= 1e-4 * (1 + abs(numeric)), (name, i)
