"""The whole model against the official code: logits, the KV-cache path, greedy generation
through the official InferenceRunner, and the checkpoint format both ways.

Checkpoints are the ones minigrok writes (tiny: 12 layers, 16 q / 8 kv heads; gqa: 13
layers, 16 q / 4 kv heads; lively: tiny with full-size post norms), each loaded by the
official loader. The official side runs exactly as run.py runs (bfloat16) and, as a
diagnostic, with float32 activations (everything else unchanged); see README.md for why
both and for the tolerances.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle_checks as oc
from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import preset, to_json


def examples(quick: int) -> int:
    """``quick`` under the default profile, 10x under --hypothesis-profile=oracle-deep."""
    return max(1, round(quick * settings.default.max_examples / 100))


def deep() -> bool:
    return settings.default.max_examples >= 1000


def oracle_settings(quick):
    return settings(max_examples=examples(quick), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# Every new sequence length costs the official code a compilation of the whole model
# (~10 s for 12 layers on 2 cores), so lengths come from a short list: one length in the
# quick profile, four in oracle-deep.
LENGTHS = (7, 24, 40, 64) if deep() else (24,)
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def sequences(draw, vocab, lengths=LENGTHS, pads_inside=True):
    """Token ids with pads (0) inside the sequence (and sometimes first), common and rare
    ids, EOS and the last id of the vocabulary."""
    T = draw(st.sampled_from(lengths), label="length")
    rng = np.random.default_rng(draw(SEEDS))
    tokens = rng.integers(1, vocab, T)
    special = np.array([2, 3, vocab - 1, 1])
    spots = rng.random(T) < 0.1
    tokens[spots] = rng.choice(special, spots.sum())
    if pads_inside:
        p = draw(st.sampled_from([0.05, 0.1, 0.3]), label="pad fraction")
        tokens[rng.random(T) < p] = 0
        tokens[draw(st.integers(1, T - 1), label="a pad inside")] = 0
        if draw(st.booleans(), label="pad first"):
            tokens[0] = 0
    return tokens.astype(np.int32)


def checkpoint(request, name):
    return request.getfixturevalue({"tiny": "tiny_dir", "gqa": "gqa_dir",
                                    "trained": "trained_dir"}[name])


# ---------------------------------------------------------------------------- logits

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["tiny", "gqa", "trained"])
@oracle_settings(3)
@given(data=st.data())
def test_model_logits_match_the_official_model(oracle, request, name, dtype, data):
    """Python API: minigrok.load(dir).logits(ids) against the official LanguageModel
    restored from the same files by ModelRunner.load_or_init. The trained model reads
    stories as well as random ids (with pads), the text it was trained on."""
    path = checkpoint(request, name)
    vocab = 4096 if name == "gqa" else 131072
    tokens = data.draw(sequences(vocab), label="tokens")
    if name == "trained" and data.draw(st.booleans(), label="a story"):
        tokens = story_tokens(data.draw(SEEDS, label="story seed"), len(tokens))
    oc.check_model_logits(oracle, path, tokens, dtype, via="api")


def story_tokens(seed: int, length: int) -> np.ndarray:
    """The first ``length`` tokens of a held-out story (as the trainer encodes them)."""
    import random
    from minigrok.formats.tokenizer import load_tokenizer
    from minigrok.training.stories import story
    from testutil import tokenizer_path
    ids = load_tokenizer(tokenizer_path()).encode(story(random.Random(f"oracle/{seed}")))
    return np.array((ids * 2)[:length], dtype=np.int32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@oracle_settings(1)
@given(data=st.data())
def test_cli_logits_match_the_official_model(oracle, tiny_dir, dtype, data):
    """``python -m minigrok logits --checkpoint DIR --tokens ... --out FILE``."""
    tokens = data.draw(sequences(131072), label="tokens")
    oc.check_model_logits(oracle, tiny_dir, tokens, dtype, via="cli")


# ------------------------------------------------------------------- KV-cache decoding

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@oracle_settings(2)
@given(data=st.data())
def test_kv_cache_decoding_matches_the_official_memory_path(oracle, tiny_dir, dtype, data):
    """Prefill then one token at a time, teacher-forced. Prompts and new tokens carry no
    pad: the official decode step masks cached keys only by position (its pad mask covers
    just the new token), so a pad inside the prompt is attended to there but not in the
    official full forward; minigrok's cache keeps the pad mask (cached == full forward).
    README.md, "official quirks"."""
    prompt = data.draw(sequences(131072, lengths=(8,) if not deep() else (5, 8, 17),
                                 pads_inside=False), label="prompt")
    n = data.draw(st.integers(1, 12), label="new tokens")
    rng = np.random.default_rng(data.draw(SEEDS))
    tokens = rng.integers(1, 131072, n).astype(np.int32)
    oc.check_decode(oracle, tiny_dir, prompt, tokens, dtype, memory_len=32)


# -------------------------------------------------------------- greedy generation

PROMPTS = st.one_of(
    st.sampled_from(["The answer to life the universe and everything is of course",
                     "Hello world", "def f(a, b):\n    return a + b", "1 2 3 4 5",
                     "Zürich café naïve 東京"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
            max_size=40))
STEPS = 32


@oracle_settings(2)
@given(prompt=PROMPTS)
def test_greedy_generation_matches_the_official_runner_float32(oracle, lively_dir, tokenizer, prompt):
    """The official InferenceRunner (run.py's loop, pad bucket 32, temperature 1e-6) with
    its activations and KV memory in float32, on a checkpoint whose greedy text changes
    from token to token: the same 32 tokens as minigrok's generate."""
    oc.assume_prompt_fits(lively_dir, tokenizer, prompt, bucket=32)
    oc.check_generation(oracle, lively_dir, tokenizer, prompt, "float32", STEPS, 32)


@oracle_settings(1)
@given(prompt=PROMPTS)
def test_greedy_generation_matches_the_official_runner_bfloat16(oracle, tiny_gen_dir, tokenizer, prompt):
    """The official InferenceRunner exactly as run.py configures it (bfloat16), on the tiny
    preset's weights: the same 32 tokens as minigrok's generate."""
    oc.assume_prompt_fits(tiny_gen_dir, tokenizer, prompt, bucket=32)
    oc.check_generation(oracle, tiny_gen_dir, tokenizer, prompt, "bfloat16", STEPS, 32)


@oracle_settings(2)
@given(prompt=st.sampled_from(["Once upon a time", "One day, Mia and her dog Pip",
                               "Long ago, there was a shy boy named Carlos. He"]))
def test_trained_model_generates_the_official_runners_story(oracle, trained_dir, tokenizer, prompt):
    """The trained built-in model through the official InferenceRunner as run.py runs it
    (bfloat16): the same greedy story as minigrok's generate, near-ties excused as above."""
    oc.check_generation(oracle, trained_dir, tokenizer, prompt, "bfloat16", STEPS, 32)


# ---------------------------------------------------------------- checkpoint format

@st.composite
def configs(draw):
    """Small configs the official code accepts (8 experts, widths divisible by 8)."""
    K = draw(st.sampled_from([1, 2, 4, 8]))
    return dataclasses.replace(
        preset("tiny"), num_layers=draw(st.integers(1, 13)), num_kv_heads=K,
        num_q_heads=K * draw(st.sampled_from([1, 2, 3])), key_size=draw(st.sampled_from([8, 16])),
        emb_size=draw(st.sampled_from([32, 64])), widening_factor=draw(st.sampled_from([1, 2, 8])),
        vocab_size=draw(st.integers(8, 300)))


@pytest.mark.parametrize("name", ["tiny", "gqa", "trained"])
def test_official_loader_reads_minigrok_checkpoints(oracle, request, name):
    """checkpoint.restore, through ModelRunner.load_or_init, gets every parameter exactly
    as minigrok's reader returns it, file i in the same place."""
    oc.check_restore(oracle, checkpoint(request, name))


@oracle_settings(2)
@given(cfg=configs(), seed=SEEDS)
def test_official_loader_reads_minigrok_checkpoints_of_any_config(oracle, tmp_path_factory, cfg,
                                                                  seed):
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c", cfg, seed=seed % 1000)
    oc.check_restore(oracle, path)


@oracle_settings(2)
@given(cfg=configs(), seed=SEEDS)
def test_minigrok_reads_checkpoints_the_official_code_writes(oracle, tmp_path_factory, cfg, seed):
    """The other way round: files pickled by the official checkpoint.fast_pickle from the
    official objects (as the release was written) read by minigrok's safe reader."""
    out = tmp_path_factory.mktemp("official") / "c"
    import json
    oc.check_official_writes(oracle, out, json.loads(to_json(cfg)), seed % 1000)
