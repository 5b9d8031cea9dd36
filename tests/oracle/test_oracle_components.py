"""Every component of minigrok against the official Haiku module, on cases hypothesis draws.

The official side is the oracle worker (official modules, the official 8-device mesh); the
checks and their tolerances are in oracle_checks.py, the table in README.md.
"""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle_checks as oc


def examples(quick: int) -> int:
    """``quick`` under the default profile, 10x under --hypothesis-profile=oracle-deep."""
    return max(1, round(quick * settings.default.max_examples / 100))


def oracle_settings(quick):
    return settings(max_examples=examples(quick), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SEEDS = st.integers(0, 2**32 - 1)
DTYPES = st.sampled_from(["float32", "bfloat16"])
# Row magnitudes from far below RMSNorm's eps (1e-5 on the mean square) to large.
MAGNITUDES = st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 30.0, 1e3])


def rows_of(rng, shape, mags):
    """Standard normal rows [T, ...], row t multiplied by mags[t]."""
    x = rng.standard_normal(shape).astype(np.float32)
    return (x * np.asarray(mags, np.float32).reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)


@st.composite
def shapes(draw, max_d=32):
    """Attention / layer shapes the official code accepts: every sharded width (D, H*d,
    K*d, F) divisible by 8; GQA ratios 1 to 6."""
    K = draw(st.sampled_from([1, 2, 4, 8]), label="kv heads")
    G = draw(st.sampled_from([1, 2, 3, 6]), label="q heads per kv head")
    d = draw(st.sampled_from([8, 16, max_d]), label="key size")
    D = draw(st.sampled_from([32, 64, 128]), label="D")
    wf = draw(st.sampled_from([1.0, 2.0, 8.0]), label="widening factor")
    mult = draw(st.sampled_from([1 / math.sqrt(d), 0.08838834764831845, 1.0]), label="multiplier")
    return oc.Shapes(D=D, H=K * G, K=K, d=d, wf=wf, multiplier=mult)


@st.composite
def token_rows(draw, T):
    """Token ids [T] with pads (0) anywhere, the first position included."""
    p = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]), label="pad fraction")
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 1000, T)
    tokens[rng.random(T) < p] = 0
    if draw(st.booleans(), label="pad first"):
        tokens[0] = 0
    return tokens.astype(np.int32)


# ----------------------------------------------------------------------------- RMSNorm

@oracle_settings(25)
@given(seed=SEEDS, T=st.integers(1, 8), D=st.integers(2, 160), dtype=DTYPES, data=st.data())
def test_rms_norm_matches_the_official_module(oracle, seed, T, D, dtype, data):
    rng = np.random.default_rng(seed)
    mags = data.draw(st.lists(MAGNITUDES, min_size=T, max_size=T), label="row magnitudes")
    x = rows_of(rng, (T, D), mags)
    scale = (1 + rng.standard_normal(D)).astype(np.float32)
    oc.check_rms_norm(oracle, x, scale, dtype)


# -------------------------------------------------------------------------------- RoPE

@oracle_settings(25)
@given(seed=SEEDS, T=st.integers(1, 16), N=st.integers(1, 6),
       d=st.sampled_from([2, 4, 8, 16, 32, 64, 128]),
       offset=st.one_of(st.integers(0, 32), st.integers(0, 8192)), dtype=DTYPES)
def test_rope_matches_the_official_module_at_any_offset(oracle, seed, T, N, d, offset, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, d)).astype(np.float32) * np.float32(rng.choice([0.01, 1, 100]))
    oc.check_rope(oracle, x, offset, dtype)


# ---------------------------------------------------- int8 dequantisation (official Linear)

@oracle_settings(20)
@given(seed=SEEDS, T=st.integers(1, 8), n_in=st.sampled_from([8, 64, 128, 256]),
       n_out=st.sampled_from([8, 48, 128]), row_parallel=st.booleans(), dtype=DTYPES)
def test_dequantisation_matches_the_official_linear(oracle, seed, T, n_in, n_out, row_parallel,
                                                    dtype):
    """Per-column scales (column-parallel, P("data", "model")) and 8 row blocks of scales
    (row-parallel, P("model", "data")), dequantised inside the official shard_map."""
    rng = np.random.default_rng(seed)
    weight, scales = oc.random_qw(rng, (n_in, n_out), 8 if row_parallel else 1,
                                  std=float(rng.choice([1e-3, 1.0, 1e3])))
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    oc.check_linear(oracle, x, weight, scales, row_parallel, dtype)


# ---------------------------------------------------------------------------- attention

@oracle_settings(15)
@given(s=shapes(), seed=SEEDS, T=st.integers(1, 24), qk_std=st.sampled_from([1.0, 4.0, 16.0]),
       dtype=DTYPES, data=st.data())
def test_attention_matches_the_official_module(oracle, s, seed, T, qk_std, dtype, data):
    """GQA ratios 1-6, the soft cap (qk_std 16 pushes logits far past 30), causal and
    pad-key masks, pads that see no key at all (pad first)."""
    rng = np.random.default_rng(seed)
    tokens = data.draw(token_rows(T), label="tokens")
    weights = oc.attention_weights_for(rng, s, qk_std)
    x = rng.standard_normal((T, s.D)).astype(np.float32)
    oc.check_attention(oracle, s, x, tokens, weights, dtype)


# ---------------------------------------------------------------------- router + MoE

@oracle_settings(15)
@given(seed=SEEDS, T=st.integers(1, 16), D=st.sampled_from([16, 32, 64]),
       wf=st.sampled_from([1.0, 2.0, 8.0]), router_std=st.sampled_from([0.0, 1.0, 4.0, 16.0]),
       tied_columns=st.booleans(), tail=st.booleans(), dtype=DTYPES)
def test_router_and_moe_match_the_official_layer(oracle, seed, T, D, wf, router_std, tied_columns,
                                                 tail, dtype):
    """Softmax router and top-2 with un-renormalised gates. router_std 0 makes all eight
    probabilities equal and tied_columns duplicates experts' router columns: exact ties,
    which both sides must break towards the lower expert index. ``tail`` puts GELU's inputs
    in its negative tail, where the tanh form and the erf form part."""
    rng = np.random.default_rng(seed)
    s = oc.Shapes(D=D, H=1, K=1, d=8, wf=wf)
    w = oc.moe_weights_for(rng, s, router_std=router_std, tail=tail)
    if tied_columns:
        w["router"][:, 5] = w["router"][:, 2]
        w["router"][:, 7] = w["router"][:, 0]
    x = rng.standard_normal((T, D)).astype(np.float32)
    if tail:
        x = np.abs(x)
    oc.check_moe(oracle, s, x, w, dtype)


# ------------------------------------------------------------------------ decoder layer

@oracle_settings(12)
@given(s=shapes(), seed=SEEDS, T=st.integers(1, 16), post=st.sampled_from([0.1, 1.0]),
       dtype=DTYPES, data=st.data())
def test_decoder_layer_matches_the_official_layer(oracle, s, seed, T, post, dtype, data):
    rng = np.random.default_rng(seed)
    tokens = data.draw(token_rows(T), label="tokens")
    w = oc.attention_weights_for(rng, s)
    w.update(oc.moe_weights_for(rng, s, prefix="moe_"))
    for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
        centre = post if n in ("rms_norm_1", "rms_norm_3") else 1.0
        w[n] = (centre * (1 + 0.1 * rng.standard_normal(s.D))).astype(np.float32)
    x = rng.standard_normal((T, s.D)).astype(np.float32) * np.float32(rng.choice([0.1, 1, 10]))
    oc.check_decoder_layer(oracle, s, x, tokens, w, dtype)


# ---------------------------------------------------------------------------- nucleus

@oracle_settings(25)
@given(seed=SEEDS, B=st.integers(1, 3), V=st.integers(1, 3000),
       kind=st.sampled_from(["normal", "peaked", "ties"]), data=st.data())
def test_top_p_filter_matches_the_official_function(oracle, seed, B, V, kind, data):
    rng = np.random.default_rng(seed)
    if kind == "ties":            # few distinct values: the tie rule and exact boundaries
        logits = rng.integers(-3, 3, (B, V)).astype(np.float32)
    else:
        logits = (rng.standard_normal((B, V)) * (8 if kind == "peaked" else 1)).astype(np.float32)
    top_p = np.asarray(data.draw(st.lists(
        st.one_of(st.floats(1e-3, 1.0), st.sampled_from([1.0, 0.5, 0.9, 0.25])),
        min_size=B, max_size=B), label="top_p"), np.float32)
    oc.check_top_p(oracle, logits, top_p)
