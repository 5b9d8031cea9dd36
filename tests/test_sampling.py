"""Nucleus filter and token sampling, checked against a separate, plain implementation."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minigrok.errors import MinigrokError
from minigrok.reference.sampling import FILTERED_LOGIT, sample_token, top_p_filter


def nucleus_reference(logits, top_p):
    """Which tokens survive, by the rule written out plainly (float64, descending).

    Take tokens from the most likely down until their total probability is above
    top_p (all of them if it never is, i.e. top_p == 1); keep every token tied with
    the last one taken. Returns a bool mask and the partial sums it looked at.
    """
    x = np.asarray(logits, dtype=np.float64)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    order = np.argsort(-x, kind="stable")
    partial = np.cumsum(probs[order])
    above = np.nonzero(partial > top_p)[0]
    n_taken = above[0] + 1 if above.size else len(x)
    last_taken = x[order[n_taken - 1]]
    return x >= last_taken, partial


# Logits from a handful of integers produce many ties; free floats, few.
tied_logits = arrays(np.float32, st.integers(1, 40),
                     elements=st.integers(-4, 4).map(float))
free_logits = arrays(np.float32, st.integers(1, 40),
                     elements=st.floats(-20, 20, width=32))
any_logits = st.one_of(tied_logits, free_logits)


@settings(max_examples=300, deadline=None)
@given(logits=any_logits, top_p=st.floats(0.01, 1.0))
def test_top_p_matches_plain_rule(logits, top_p):
    expected, partial = nucleus_reference(logits, top_p)
    # float32 vs float64 rounding may disagree when a partial sum lands right on the
    # boundary; the rule is only checked where the answer is not a rounding question.
    assume(np.all(np.abs(partial - top_p) > 1e-4))
    out = top_p_filter(logits, top_p)
    assert out.dtype == np.float32 and out.shape == logits.shape
    kept = out != FILTERED_LOGIT
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(out[kept], logits[kept])


@given(logits=any_logits)
def test_top_p_one_keeps_everything(logits):
    np.testing.assert_array_equal(top_p_filter(logits, 1.0), logits)


def test_top_p_keeps_mass_strictly_above_p():
    # probabilities 0.5, 0.375, 0.125 (exact in float32): the top token alone has
    # exactly 0.5, which does not exceed top_p = 0.5, so the official rule also keeps
    # the 0.375 one.
    logits = np.log(np.array([0.5, 0.375, 0.125], dtype=np.float32))
    kept = top_p_filter(logits, 0.5) != FILTERED_LOGIT
    np.testing.assert_array_equal(kept, [True, True, False])
    kept = top_p_filter(logits, 0.49) != FILTERED_LOGIT
    np.testing.assert_array_equal(kept, [True, False, False])


def test_ties_at_threshold_all_kept():
    logits = np.array([3.0, 1.0, 1.0, 1.0, -2.0], dtype=np.float32)
    kept = top_p_filter(logits, 0.9) != FILTERED_LOGIT
    np.testing.assert_array_equal(kept, [True, True, True, True, False])


@settings(deadline=None)
@given(rows=st.integers(1, 4).flatmap(
    lambda b: st.tuples(arrays(np.float32, (b, 17), elements=st.floats(-10, 10, width=32)),
                        arrays(np.float32, (b,), elements=st.floats(0.0625, 1.0, width=32)))))
def test_top_p_batched_equals_row_by_row(rows):
    logits, top_p = rows
    out = top_p_filter(logits, top_p)
    for i in range(len(logits)):
        np.testing.assert_array_equal(out[i], top_p_filter(logits[i], float(top_p[i])))


@given(logits=free_logits, top_p=st.floats(0.01, 1.0))
def test_greedy_is_argmax(logits, top_p):
    assert sample_token(logits, 0.0, top_p, None) == int(np.argmax(logits))
    assert sample_token(logits, 0, top_p, np.random.default_rng(0)) == int(np.argmax(logits))


def test_greedy_batched():
    logits = np.array([[0, 5, 1], [9, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(sample_token(logits, 0.0, 1.0, None), [1, 0])


def test_sampling_reproducible_per_seed_and_seeds_differ():
    flat = np.zeros(1000, dtype=np.float32)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_token(flat, 1.0, 1.0, rng) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert len(set(draw(7))) > 10  # a flat distribution really is spread out


@settings(max_examples=100, deadline=None)
@given(logits=any_logits, temperature=st.floats(0.05, 5.0), top_p=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_sample_lies_in_kept_set(logits, temperature, top_p, seed):
    scaled = logits / np.float32(temperature)
    kept = np.nonzero(top_p_filter(scaled, top_p) != FILTERED_LOGIT)[0]
    rng = np.random.default_rng(seed)
    for _ in range(10):
        assert sample_token(logits, temperature, top_p, rng) in kept


def test_sample_batched_shape_and_kept():
    logits = np.array([[10, 0, 0, 0], [0, 0, 0, 10]], dtype=np.float32)
    tokens = sample_token(logits, 1.0, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(tokens, [0, 3])


def test_sample_frequencies_follow_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    rng = np.random.default_rng(1)
    counts = np.bincount([sample_token(logits, 1.0, 1.0, rng) for _ in range(4000)],
                         minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize("temperature", [-0.1, -1, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    with pytest.raises(MinigrokError, match="temperature"):
        sample_token(np.zeros(4, np.float32), temperature, 0.9, np.random.default_rng(0))


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.01, 2, float("nan")])
def test_bad_top_p(top_p):
    with pytest.raises(MinigrokError, match="top_p"):
        sample_token(np.zeros(4, np.float32), 1.0, top_p, np.random.default_rng(0))
    with pytest.raises(MinigrokError, match="top_p"):
        sample_token(np.zeros(4, np.float32), 0.0, top_p, None)
    with pytest.raises(MinigrokError, match="top_p"):
        top_p_filter(np.zeros(4, np.float32), top_p)


def test_temperature_that_overflows():
    with pytest.raises(MinigrokError, match="too small"):
        sample_token(np.array([1e30, 0], np.float32), 1e-30, 1.0, np.random.default_rng(0))
