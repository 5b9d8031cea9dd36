"""Whole-model properties on checkpoints minigrok writes itself.

``small`` (3 layers, vocab 1024) carries the many-example properties; ``tiny`` (the real
preset: 12 layers, full vocabulary) a few fixed checks, including the layer order, which
only shows from 11 layers on.
"""

import dataclasses
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrok
from minigrok.errors import MinigrokError
from minigrok.reference.attention import new_cache
from minigrok.reference.generate import generate_tokens
from minigrok.reference.model import forward

SMALL_V = 1024
EXAMPLES = settings(max_examples=15, deadline=None)


@pytest.fixture(scope="module")
def small(small_dir):
    return minigrok.load(small_dir)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return minigrok.load(tiny_dir)


def full(m, ids):
    return forward(m.params, m.config, np.asarray(ids))


def close(actual, expected, rel):
    """Equal within ``rel`` of the largest logit in ``expected`` (per row)."""
    assert actual.shape == expected.shape
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    err = (np.abs(actual - expected) / scale).max(axis=-1)
    assert np.all(err <= rel), f"relative error per row {err} exceeds {rel}"


# Token sequences for small: first token never pad (so every query sees a kept key).
first = st.integers(1, SMALL_V - 1)
any_token = st.integers(0, SMALL_V - 1)
non_pad = st.integers(1, SMALL_V - 1)


# ----------------------------------------------------------------------------- shape, errors

def test_logits_shape_and_dtype(small, tiny):
    out = small.logits([5, 17, 300])
    assert out.shape == (3, SMALL_V) and out.dtype == np.float32
    out = tiny.logits([5, 17, 300, 0, 9])
    assert out.shape == (5, 131072) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # random weights still give distinct, non-constant rows
    assert np.std(out, axis=-1).min() > 0.1
    assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("ids", [[SMALL_V], [5, -1], [5, SMALL_V + 7], []])
def test_logits_rejects_ids_out_of_range(small, ids):
    with pytest.raises(MinigrokError):
        small.logits(ids)


def test_logits_accepts_the_edges_of_the_vocabulary(small):
    assert small.logits([SMALL_V - 1, 0, 1]).shape == (3, SMALL_V)


# ----------------------------------------------------------------------------- causality

@EXAMPLES
@given(head=first, rest=st.lists(any_token, min_size=1, max_size=10), data=st.data())
def test_changing_a_later_token_never_changes_earlier_logits(small, head, rest, data):
    ids = [head] + rest
    j = data.draw(st.integers(1, len(ids) - 1), label="changed position")
    new = data.draw(any_token, label="new token")
    new = new if new != ids[j] else (new + 1) % SMALL_V
    changed = list(ids)
    changed[j] = new
    a, b = full(small, ids), full(small, changed)
    close(b[:j], a[:j], 1e-5)
    # the changed position itself does move (so the comparison above is not vacuous)
    assert np.abs(b[j] - a[j]).max() > 1e-4 * np.abs(a[j]).max()
    # and a prefix alone gives the same logits as inside the longer sequence
    close(full(small, ids[:j]), a[:j], 1e-5)


# ----------------------------------------------------------------------------- padding

def with_pad_row(m, row):
    """m.params with the pad token's embedding row replaced (an in-memory copy)."""
    embed = np.array(m.params["in_out_embed"], dtype=np.float32, copy=True)
    embed[m.config.pad_token] = row
    return dict(m.params, in_out_embed=embed)


@EXAMPLES
@given(tokens=st.lists(non_pad, min_size=1, max_size=8),
       pads=st.lists(st.integers(1, 8), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_pad_embedding_never_reaches_a_non_pad_position(small, tokens, pads, seed):
    ids = list(tokens)
    for p in pads:                                   # never at position 0
        ids.insert(min(p, len(ids)), 0)
    ids = np.array(ids)
    is_pad = ids == 0
    cfg = small.config
    base = forward(small.params, cfg, ids)
    row = np.random.default_rng(seed).standard_normal(cfg.emb_size).astype(np.float32) * 0.5
    moved = forward(with_pad_row(small, row), cfg, ids)
    # every logit of every non-pad position, except column 0 (the pad token's own output
    # embedding, which is the row we changed), is untouched
    # (within float32 noise: which tokens share an expert call, and so the BLAS kernel's
    # rounding, depends on how the pad tokens are routed)
    close(moved[~is_pad][:, 1:], base[~is_pad][:, 1:], 1e-5)
    # column 0 does move there (it is h . E[0]) ...
    assert np.abs(moved[~is_pad][:, 0] - base[~is_pad][:, 0]).min() > 1e-6
    # ... and at the pad positions themselves the new embedding changes the whole row
    assert np.all(np.abs(moved[is_pad][:, 1:] - base[is_pad][:, 1:]).max(axis=-1) > 1e-2)


# ----------------------------------------------------------------------------- layer order

LAYER_TENSORS = [("multi_head_attention", "query"), ("multi_head_attention", "key"),
                 ("multi_head_attention", "value"), ("multi_head_attention", "linear"),
                 ("moe", "linear"), ("moe", "linear_v"), ("moe", "linear_1"),
                 ("router",), ("rms_norm",), ("rms_norm_1",), ("rms_norm_2",), ("rms_norm_3",)]


def official_name(i, path):
    leaf = "scale" if path[0].startswith("rms_norm") else "w"
    return f"transformer/decoder_layer_{i}/" + "/".join(path) + "/" + leaf


def arrays_of(t):
    """A parameter's arrays: a quantised weight's (the checkpoint's QuantizedWeight8bit or the
    engine's Int8Weight, which holds the same arrays) or the float array itself."""
    return (t.weight, t.scales) if hasattr(t, "scales") else (t,)


def test_layers_are_used_in_numeric_order(tiny):
    L = tiny.config.num_layers
    assert L == 12
    names = [s.name for s in tiny.checkpoint.specs]
    # the files really are in lexicographic order: layer 10 is stored before layer 2
    first_index = {i: min(n for n, name in enumerate(names)
                          if name.startswith(f"transformer/decoder_layer_{i}/")) for i in range(L)}
    assert first_index[10] < first_index[2] and first_index[11] < first_index[2]
    for i in range(L):
        layer = tiny.params["layers"][i]
        for path in LAYER_TENSORS:
            got = layer
            for key in path:
                got = got[key]
            want = tiny.checkpoint.params[official_name(i, path)]
            for g, w in zip(arrays_of(got), arrays_of(want)):
                np.testing.assert_array_equal(g, w)
            if i:   # and the layers differ, so the comparison identifies layer i
                other = tiny.checkpoint.params[official_name(i - 1, path)]
                assert not np.array_equal(arrays_of(other)[0], arrays_of(want)[0])


def test_sorted_file_order_of_layers_gives_different_logits(tiny):
    L = tiny.config.num_layers
    file_order = sorted(range(L), key=lambda i: f"decoder_layer_{i}")
    assert file_order[:4] == [0, 1, 10, 11]
    scrambled = dict(tiny.params, layers=[tiny.params["layers"][i] for i in file_order])
    ids = np.array([5, 17, 300, 1234])
    right = forward(tiny.params, tiny.config, ids)
    wrong = forward(scrambled, tiny.config, ids)
    np.testing.assert_array_equal(right, tiny.logits(ids))
    assert np.abs(right - wrong).max() > 0.01 * np.abs(right).max()   # noise is ~1e-6


# ----------------------------------------------------------------------------- KV cache

@EXAMPLES
@given(head=first, rest=st.lists(any_token, min_size=1, max_size=9), data=st.data(),
       spare=st.integers(0, 3))
def test_kv_cache_prefill_then_steps_equals_full_forward(small, head, rest, data, spare):
    ids = np.array([head] + rest)
    T = len(ids)
    k = data.draw(st.integers(1, T), label="prefill length")
    cfg = small.config
    expected = full(small, ids)
    cache = new_cache(cfg.num_layers, T + spare, cfg.num_kv_heads, cfg.key_size)
    got = [forward(small.params, cfg, ids[:k], cache)]
    assert cache["length"] == k
    for t in range(k, T):
        got.append(forward(small.params, cfg, ids[t:t + 1], cache))
        assert cache["length"] == t + 1
    got = np.concatenate(got)
    assert got.shape == expected.shape and got.dtype == np.float32
    close(got, expected, 1e-4)


def test_kv_cache_last_only_and_chunks(tiny):
    ids = np.array([7, 0, 300, 42, 0, 0, 9, 131071, 2])
    cfg = tiny.config
    expected = full(tiny, ids)
    cache = new_cache(cfg.num_layers, len(ids), cfg.num_kv_heads, cfg.key_size)
    parts = []
    for a, b in ((0, 3), (3, 4), (4, 8), (8, 9)):
        out = forward(tiny.params, cfg, ids[a:b], cache, last_only=True)
        assert out.shape == (1, cfg.vocab_size)
        parts.append((b - 1, out[0]))
    for t, row in parts:
        close(row[None], expected[t][None], 1e-4)


def mixing_config(cfg):
    """The same weights with the input embeddings scaled down 100x.

    The random checkpoints' layers add small updates (post-norm scales ~0.1), so their
    greedy continuation of a token is mostly that token again, and a decode loop feeding
    back the wrong token would hardly show. With the embedding scaled down the layers
    dominate and continuations vary; every property must hold for any weights and scales.
    """
    return dataclasses.replace(cfg, embedding_multiplier_scale=0.1)


def check_greedy_steps(params, cfg, prompt, new):
    seq = list(prompt)
    for token in new:
        row = forward(params, cfg, np.asarray(seq))[-1]
        # the argmax, unless two logits are too close for float32 to tell apart
        assert token == int(np.argmax(row)) or row[token] >= row.max() - 1e-5 * np.abs(row).max()
        seq.append(token)


@EXAMPLES
@given(prompt=st.lists(non_pad, min_size=1, max_size=5), n=st.integers(1, 6),
       mixing=st.booleans())
def test_greedy_generation_is_argmax_of_full_forward(small, prompt, n, mixing):
    cfg = mixing_config(small.config) if mixing else small.config
    new = list(generate_tokens(small.params, cfg, prompt, max_new_tokens=n))
    assert 1 <= len(new) <= n
    assert len(new) == n or new[-1] == cfg.eos_token
    assert cfg.eos_token not in new[:-1]
    check_greedy_steps(small.params, cfg, prompt, new)


def test_greedy_generation_feeds_back_what_it_generated(small):
    cfg = mixing_config(small.config)
    prompt = [5, 17, 300]
    new = list(generate_tokens(small.params, cfg, prompt, max_new_tokens=8))
    # the continuation moves on (so a loop re-feeding a stale token would be caught)
    assert len(new) == 8 and len(set(new)) >= 4
    check_greedy_steps(small.params, cfg, prompt, new)


def test_greedy_generation_on_tiny_and_api_agree(tiny):
    prompt = [5, 17, 300]
    new = list(tiny.generate_ids(prompt, max_new_tokens=4))
    seq = list(prompt)
    for token in new:
        assert token == int(np.argmax(tiny.logits(seq)[-1]))
        seq.append(token)
    assert len(new) == 4 or new[-1] == tiny.config.eos_token


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(small):
    # A context of 12 with 4 new tokens leaves room for 8 prompt tokens.
    cfg = dataclasses.replace(small.config, sequence_len=12)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, cfg.vocab_size, 20)]
    with pytest.warns(UserWarning, match="keeping its last 8"):
        cut = list(generate_tokens(small.params, cfg, prompt, max_new_tokens=4))
    assert cut == list(generate_tokens(small.params, cfg, prompt[-8:], max_new_tokens=4))
    assert cut != list(generate_tokens(small.params, cfg, prompt[:8], max_new_tokens=4))


@pytest.mark.parametrize("name", ["transformer/decoder_layer_2/rms_norm_2/scale",
                                  "transformer/decoder_layer_1/multi_head_attention/linear/w",
                                  "transformer/decoder_layer_0/router/w",
                                  "language_model/in_out_embed/embeddings",
                                  "language_model/rms_norm/scale"])
def test_a_nan_weight_is_named_on_the_first_forward(small_dir, tmp_path, name):
    # (A NaN in an expert that no token chooses changes nothing, and is not reported.)
    from minigrok.formats import safepickle
    from minigrok.formats.checkpoint import tensor_file, tensor_specs
    from minigrok.reference.config import load_config

    copy = shutil.copytree(small_dir, tmp_path / "copy")
    specs = tensor_specs(load_config(copy))
    path = copy / "ckpt-0" / tensor_file(next(i for i, s in enumerate(specs) if s.name == name))
    held = safepickle.load(path)
    values = np.asarray(held.scales if hasattr(held, "scales") else held)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(values.tobytes())                  # where the array's bytes lie
    # row 5 (token 5's, in the embeddings), column 3
    k = values.itemsize * (5 * values.shape[-1] + 3 if values.ndim > 1 else 3)
    nan = np.array([0x7FC0], np.uint16) if values.itemsize == 2 else np.array([np.nan], np.float32)
    data[at + k:at + k + values.itemsize] = nan.tobytes()
    path.write_bytes(bytes(data))
    m = minigrok.load(copy)
    with pytest.raises(MinigrokError, match=f"^{name}: holds a NaN or an infinity"):
        m.logits([5, 17, 300])
    with pytest.raises(MinigrokError, match=f"^{name}: holds a NaN"):
        list(m.generate_ids([5, 17, 300], max_new_tokens=2))
