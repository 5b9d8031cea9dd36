"""Properties of the building blocks (RMSNorm, RoPE, attention, MoE, int8 weights).

Every reference here is written independently of the code under test: float64, explicit
loops over rows / heads / experts, and ml_dtypes for bfloat16. No checkpoint is needed.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st


from minigrok.reference import quant
from minigrok.reference.attention import attention, attention_weights, context
from minigrok.reference.moe import gelu, moe, route
from minigrok.reference.rmsnorm import EPS, rms_norm
from minigrok.reference.rope import apply_rope

SEEDS = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=40, deadline=None)


def rng_of(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- RMSNorm

def rms_norm_reference(x, scale, eps=EPS):
    """Row by row in float64."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for i, row in enumerate(x.reshape(-1, x.shape[-1])):
        ms = sum(float(v) * float(v) for v in row) / len(row)
        out.reshape(-1, x.shape[-1])[i] = row / math.sqrt(ms + eps) * np.asarray(scale, np.float64)
    return out


@FAST
@given(seed=SEEDS, rows=st.integers(1, 6), width=st.integers(2, 64),
       factor=st.floats(0.1, 1e4), level=st.floats(3.0, 100.0))
def test_rms_norm_is_invariant_to_positive_scaling(seed, rows, width, factor, level):
    rng = rng_of(seed)
    x = rng.standard_normal((rows, width))
    # every row has rms exactly `level` (>= 3 >> sqrt(eps) ~ 0.003), at least 0.3 after
    # scaling, so eps changes the result by at most ~1e-4 relative...
    x = x / np.sqrt((x * x).mean(-1, keepdims=True)) * level
    x = x.astype(np.float32)
    scale = rng.standard_normal(width).astype(np.float32)
    a = rms_norm(x, scale)
    b = rms_norm((x * np.float32(factor)).astype(np.float32), scale)
    # ...so bound the eps effect explicitly: relative change <= eps / (2 ms) per side.
    ms_small = min(level, level * factor) ** 2
    tol = EPS / ms_small + 1e-5
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(scale).max())


def test_rms_norm_scaling_is_not_trivially_satisfied():
    # guard against a norm that ignores its input: different directions, different outputs
    x = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]], np.float32)
    out = rms_norm(x, np.ones(4, np.float32))
    assert not np.allclose(out[0], out[1])
    # a known value: [3, 4] has rms sqrt(12.5)
    np.testing.assert_allclose(rms_norm(np.array([3.0, 4.0], np.float32), np.ones(2, np.float32)),
                               np.array([3.0, 4.0]) / math.sqrt(12.5 + EPS), rtol=1e-6)


@FAST
@given(seed=SEEDS, shape=st.sampled_from([(5,), (3, 17), (2, 3, 32), (4, 128)]),
       spread=st.floats(1e-3, 1e3), dtype=st.sampled_from([np.float32, np.float64, np.float16]))
def test_rms_norm_matches_float64_reference(seed, shape, spread, dtype):
    rng = rng_of(seed)
    x = (rng.standard_normal(shape) * spread).astype(dtype)
    scale = (1 + 0.3 * rng.standard_normal(shape[-1])).astype(np.float32)
    out = rms_norm(x, scale)
    assert out.dtype == np.float32
    assert out.shape == x.shape
    ref = rms_norm_reference(x, scale)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max() + 1e-30)


def test_rms_norm_scale_multiplies_directly():
    # Grok-1 multiplies by scale itself, not by (1 + scale): scale 0 gives 0
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(rms_norm(x, np.zeros(4, np.float32)), np.zeros((2, 4)))


# ----------------------------------------------------------------------------- RoPE

def rope_reference(x, positions, base=10000.0):
    """Explicit 2x2 rotations in float64: features i and i + d/2 turn by p * base^(-2i/d)."""
    x = np.asarray(x, dtype=np.float64)
    T, N, d = x.shape
    half = d // 2
    out = np.empty_like(x)
    for t in range(T):
        for n in range(N):
            for i in range(half):
                theta = float(positions[t]) * base ** (-2.0 * i / d)
                c, s = math.cos(theta), math.sin(theta)
                a, b = x[t, n, i], x[t, n, i + half]
                out[t, n, i] = c * a - s * b
                out[t, n, i + half] = s * a + c * b
    return out


head_dims = st.sampled_from([2, 4, 8, 16, 32, 128])


@FAST
@given(seed=SEEDS, T=st.integers(1, 6), N=st.integers(1, 4), d=head_dims,
       max_pos=st.sampled_from([8, 1000, 8191]))
def test_rope_keeps_every_head_norm(seed, T, N, d, max_pos):
    rng = rng_of(seed)
    x = (rng.standard_normal((T, N, d)) * 3).astype(np.float32)
    pos = rng.integers(0, max_pos + 1, T)
    out = apply_rope(x, pos)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=-1),
                               np.linalg.norm(x.astype(np.float64), axis=-1), rtol=1e-5)


@FAST
@given(seed=SEEDS, d=head_dims, m=st.integers(0, 512), n=st.integers(0, 512),
       shift=st.integers(0, 4096))
def test_rope_dot_product_depends_only_on_relative_position(seed, d, m, n, shift):
    rng = rng_of(seed)
    q = rng.standard_normal((1, 1, d)).astype(np.float32)
    k = rng.standard_normal((1, 1, d)).astype(np.float32)

    def dot(pq, pk):
        a = apply_rope(q, np.array([pq])).astype(np.float64)
        b = apply_rope(k, np.array([pk])).astype(np.float64)
        return float((a * b).sum())

    scale = float(np.linalg.norm(q) * np.linalg.norm(k))
    # float32 angles of positions up to ~5000 are off by < 1e-3 rad
    assert abs(dot(m + shift, n + shift) - dot(m, n)) <= 3e-3 * scale


def test_rope_relative_dot_product_changes_with_distance():
    # the property above must be able to fail: a different distance, a different dot
    rng = rng_of(0)
    q = rng.standard_normal((1, 1, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 16)).astype(np.float32)
    dots = [float((apply_rope(q, np.array([p])) * apply_rope(k, np.array([0]))).sum())
            for p in range(4)]
    assert len({round(v, 3) for v in dots}) == 4


@FAST
@given(seed=SEEDS, T=st.integers(1, 4), N=st.integers(1, 3), d=head_dims,
       max_pos=st.sampled_from([3, 100, 8191]))
def test_rope_is_rotate_half_pairs_at_documented_angles(seed, T, N, d, max_pos):
    rng = rng_of(seed)
    x = rng.standard_normal((T, N, d)).astype(np.float32)
    pos = rng.integers(0, max_pos + 1, T)
    out = apply_rope(x, pos).astype(np.float64)
    ref = rope_reference(x, pos)
    # float32 angle p * inv_freq is off by ~2 ulp: a tolerance growing with the position
    tol = (2e-6 + 3e-7 * pos.astype(np.float64))[:, None, None] * np.abs(x).max()
    assert np.all(np.abs(out - ref) <= tol)


def test_rope_is_not_interleaved():
    # d = 4, position 1: pairs are (0, 2) at angle 1 and (1, 3) at angle 1/100
    x = np.array([[[1.0, 0.0, 0.0, 0.0]]], np.float32)
    out = apply_rope(x, np.array([1]))[0, 0]
    np.testing.assert_allclose(out, [math.cos(1), 0, math.sin(1), 0], atol=1e-6)
    x = np.array([[[0.0, 1.0, 0.0, 0.0]]], np.float32)
    out = apply_rope(x, np.array([1]))[0, 0]
    np.testing.assert_allclose(out, [0, math.cos(0.01), 0, math.sin(0.01)], atol=1e-6)


@FAST
@given(seed=SEEDS, T=st.integers(1, 5), N=st.integers(1, 3), d=head_dims)
def test_rope_position_zero_is_identity(seed, T, N, d):
    x = (rng_of(seed).standard_normal((T, N, d)) * 10).astype(np.float32)
    np.testing.assert_array_equal(apply_rope(x, np.zeros(T, dtype=np.int64)), x)


# ----------------------------------------------------------------------------- attention

def softmax64(row):
    row = np.asarray(row, np.float64)
    e = np.exp(row - row.max())
    return e / e.sum()


def attention_weights_reference(q_heads, k, keep, offset, multiplier, num_kv_heads):
    """Naive float64, one query head at a time: q_heads [T, H, d], k [S, K, d] -> [H, T, S].

    Query head h reads kv head h // G. A query that sees no key averages all keys (the
    official -1e30 mask), which is what softmax over equal masked scores gives.
    """
    T, H, d = q_heads.shape
    S = k.shape[0]
    G = H // num_kv_heads
    out = np.zeros((H, T, S))
    for h in range(H):
        kv = h // G
        for t in range(T):
            scores = np.empty(S)
            visible = np.zeros(S, bool)
            for s in range(S):
                raw = float(np.dot(q_heads[t, h].astype(np.float64), k[s, kv].astype(np.float64)))
                scores[s] = 30.0 * math.tanh(raw * multiplier / 30.0)
                visible[s] = s <= offset + t and keep[s]
            if visible.any():
                out[h, t, visible] = softmax64(scores[visible])
            else:
                out[h, t, :] = 1.0 / S
    return out


@st.composite
def gqa_problem(draw):
    K = draw(st.sampled_from([1, 2, 4]))
    G = draw(st.sampled_from([1, 2, 3]))
    d = draw(st.sampled_from([2, 4, 8]))
    T = draw(st.integers(1, 5))
    offset = draw(st.integers(0, 3))
    S = offset + T
    keep = np.array(draw(st.lists(st.booleans(), min_size=S, max_size=S)))
    return K, G, d, T, offset, keep, draw(SEEDS)


@FAST
@given(problem=gqa_problem())
def test_attention_weights_match_naive_per_head_loop(problem):
    K, G, d, T, offset, keep, seed = problem
    rng = rng_of(seed)
    S, H = offset + T, K * G
    q = (rng.standard_normal((T, H, d)) * 2).astype(np.float32)
    k = (rng.standard_normal((S, K, d)) * 2).astype(np.float32)
    w = attention_weights(q.reshape(T, K, G, d), k, keep, offset, 0.5)
    assert w.shape == (K, G, T, S) and w.dtype == np.float32
    ref = attention_weights_reference(q, k, keep, offset, 0.5, K)
    np.testing.assert_allclose(w.reshape(H, T, S), ref, rtol=1e-5, atol=1e-6)
    # GQA == multi-head attention with each kv head repeated for its query group
    mha = attention_weights(q.reshape(T, H, 1, d), np.repeat(k, G, axis=1), keep, offset, 0.5)
    np.testing.assert_allclose(w.reshape(H, T, S), mha.reshape(H, T, S), rtol=1e-6, atol=1e-7)


@FAST
@given(problem=gqa_problem())
def test_attention_masks_and_normalisation(problem):
    K, G, d, T, offset, keep, seed = problem
    rng = rng_of(seed)
    S = offset + T
    q = rng.standard_normal((T, K, G, d)).astype(np.float32) * 4
    k = rng.standard_normal((S, K, d)).astype(np.float32) * 4
    w = attention_weights(q, k, keep, offset, 0.25)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    for t in range(T):
        later = np.arange(S) > offset + t
        visible = ~later & keep
        if visible.any():
            assert np.all(w[:, :, t, later] == 0.0)         # causal: exactly zero
            assert np.all(w[:, :, t, ~keep] == 0.0)         # pad keys: exactly zero
            assert np.all(w[:, :, t, visible] > 0.0)
        else:
            # nothing to see: the official -1e30 mask averages every key of the call
            np.testing.assert_allclose(w[:, :, t, :], 1.0 / S, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, S=st.integers(2, 8), d=st.sampled_from([4, 16]),
       big=st.integers(20, 100))
def test_attention_soft_cap_bounds_scores_by_30(seed, S, d, big):
    rng = rng_of(seed)
    # integer q and k: q.k is exact in float32 (|q.k| < 2^24) and the multiplier 1/4 is too,
    # so the raw scores the code sees are exactly the float64 ones below
    q = rng.integers(-big, big + 1, (1, 1, 1, d)).astype(np.float32)
    k = rng.integers(-big, big + 1, (S, 1, d)).astype(np.float32)
    raw = (k[:, 0].astype(np.float64) @ q[0, 0, 0].astype(np.float64)) * 0.25
    assume(raw.max() - raw.min() > 120)            # uncapped, the softmax would be one-hot
    w = attention_weights(q, k, np.ones(S, bool), S - 1, 0.25)[0, 0, 0]     # sees every key
    expected = softmax64(30.0 * np.tanh(raw / 30.0))
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-35)
    # |capped score| <= 30, so no two probabilities differ by more than e^60
    assert np.all(w > 0)
    assert np.log(w.max()) - np.log(w.min()) <= 60.0 + 1e-3
    # and it matters: without the cap the smallest weight would underflow far below this
    with np.errstate(divide="ignore"):                 # the uncapped minimum may be exactly 0
        assert np.log(softmax64(raw).min()) < np.log(w.min()) - 50


def naive_attention_reference(x, wq, wk, wv, wo, H, K, d, multiplier, keep):
    """Whole attention in float64 with explicit RoPE and a per-head loop (no cache)."""
    x = x.astype(np.float64)
    T = x.shape[0]
    G = H // K
    pos = np.arange(T)
    q = rope_reference((x @ wq.astype(np.float64)).reshape(T, H, d), pos)
    k = rope_reference((x @ wk.astype(np.float64)).reshape(T, K, d), pos)
    v = (x @ wv.astype(np.float64)).reshape(T, K, d)
    out = np.zeros((T, H * d))
    for h in range(H):
        for t in range(T):
            scores = []
            for s in range(t + 1):
                if not keep[s]:
                    continue
                raw = float(q[t, h] @ k[s, h // G]) * multiplier
                scores.append((s, 30.0 * math.tanh(raw / 30.0)))
            if not scores:
                continue                       # excluded below: only kept first tokens
            p = softmax64([sc for _, sc in scores])
            for (s, _), ps in zip(scores, p):
                out[t, h * d:(h + 1) * d] += ps * v[s, h // G]
    return out @ wo.astype(np.float64)


@FAST
@given(seed=SEEDS, T=st.integers(1, 6), K=st.sampled_from([1, 2, 4]),
       G=st.sampled_from([1, 2, 3]), d=st.sampled_from([4, 8]), D=st.sampled_from([8, 24]),
       pads=st.lists(st.booleans(), min_size=6, max_size=6))
def test_attention_matches_naive_float64_reference(seed, T, K, G, d, D, pads):
    rng = rng_of(seed)
    H = K * G
    x = rng.standard_normal((T, D)).astype(np.float32)
    wq, wk, wv = (rng.standard_normal((D, n)).astype(np.float32) / math.sqrt(D)
                  for n in (H * d, K * d, K * d))
    wo = rng.standard_normal((H * d, D)).astype(np.float32) / math.sqrt(H * d)
    keep = ~np.array(pads[:T])
    keep[0] = True                                 # every query sees at least one key
    out = attention(x, wq, wk, wv, wo, num_q_heads=H, num_kv_heads=K, key_size=d,
                    multiplier=1 / math.sqrt(d), keep=keep)
    assert out.shape == (T, D) and out.dtype == np.float32
    ref = naive_attention_reference(x, wq, wk, wv, wo, H, K, d, 1 / math.sqrt(d), keep)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("K,G", [(2, 3), (4, 2), (8, 2)])
def test_query_head_h_reads_kv_head_h_over_G(K, G):
    # values are constant per kv head (v[:, j, :] == j + 1) and W_o is the identity, so
    # query head h outputs exactly the number of the kv head it reads, plus one
    H, d, T = K * G, 4, 5
    D = H * d
    rng = rng_of(K * 10 + G)
    x = rng.standard_normal((T, D)).astype(np.float32)
    x[:, 0] = 1.0
    wv = np.zeros((D, K * d), np.float32)
    for j in range(K):
        wv[0, j * d:(j + 1) * d] = j + 1
    wq = rng.standard_normal((D, H * d)).astype(np.float32)
    wk = rng.standard_normal((D, K * d)).astype(np.float32)
    out = attention(x, wq, wk, wv, np.eye(D, dtype=np.float32), num_q_heads=H,
                    num_kv_heads=K, key_size=d, multiplier=0.5, keep=np.ones(T, bool))
    expected = np.repeat(np.arange(H) // G + 1.0, d)[None, :].repeat(T, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@st.composite
def blocked_problem(draw):
    """A gqa_problem of up to 12 queries, some of whose first keys may all be pads, and a
    query block size from 1 row to all of them."""
    K, G, d = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3])), 4
    T, offset = draw(st.integers(1, 12)), draw(st.integers(0, 6))
    S = offset + T
    keep = np.array(draw(st.lists(st.booleans(), min_size=S, max_size=S)))
    keep[:draw(st.one_of(st.just(S), st.integers(0, S)))] = False  # leading pads, maybe all
    return K, G, d, T, offset, keep, draw(st.integers(1, T)), draw(SEEDS)


@FAST
@given(problem=blocked_problem())
def test_context_in_query_blocks_matches_the_naive_reference(problem):
    # Blocks read only the keys up to their last query, except a block holding a query that
    # sees no key (the official mask then averages every key): the float64 reference below
    # knows nothing of blocks, so a wrong ``end`` on either side of that rule fails here.
    K, G, d, T, offset, keep, rows, seed = problem
    rng = rng_of(seed)
    S, H = offset + T, K * G
    q = (rng.standard_normal((T, K, G, d)) * 2).astype(np.float32)
    k, v = ((rng.standard_normal((S, K, d)) * 2).astype(np.float32) for _ in range(2))
    probs = []
    out = context(q, k, v, keep, offset, 0.5, probs, score_bytes=rows * H * S * 4)
    assert len(probs) == -(-T // rows)
    probs = np.concatenate(probs, axis=2)                                 # [K, G, T, S]
    ref = attention_weights_reference(q.reshape(T, H, d), k, keep, offset, 0.5, K)
    np.testing.assert_allclose(probs.reshape(H, T, S), ref, rtol=1e-5, atol=1e-6)
    assert np.all(probs.reshape(H, T, S)[ref == 0] == 0)       # masked keys: exactly zero
    want = np.einsum("hts,shd->thd", ref, np.repeat(v, G, axis=1).astype(np.float64))
    np.testing.assert_allclose(out.reshape(T, H, d), want, rtol=1e-5, atol=1e-5)


def test_long_attention_holds_one_block_of_scores_at_a_time():
    # 512 queries x 512 keys x 8 heads: 8 MB of scores per temporary in one piece (the
    # softmax makes several); in blocks of 1 MB the whole call stays under 5 MB.
    import tracemalloc

    K, G, d, T = 4, 2, 16, 512
    rng = rng_of(5)
    x = rng.standard_normal((T, 64)).astype(np.float32)
    w = [rng.standard_normal((64, n)).astype(np.float32) / 8 for n in (K * G * d, K * d, K * d)]
    w.append(rng.standard_normal((K * G * d, 64)).astype(np.float32) / 8)
    keep = np.ones(T, bool)

    def run(score_bytes):
        tracemalloc.start()
        try:
            out = attention(x, *w, num_q_heads=K * G, num_kv_heads=K, key_size=d,
                            multiplier=0.25, keep=keep, score_bytes=score_bytes)
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    blocked, peak = run(1 << 20)
    whole, whole_peak = run(1 << 40)
    assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MB"
    assert whole_peak > 16 << 20            # the same call in one piece: the bound is real
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- MoE

def gelu_tanh64(v):
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def test_gelu_is_the_tanh_approximation():
    x = np.array([1.0, -1.0, 2.0, -3.0, 0.5, 0.0], np.float32)
    tanh_form = [0.8411919906082768, -0.15880800939172324, 1.954597694087775,
                 -0.0036373920817729943, 0.34571400982514394, 0.0]
    erf_form = [0.8413447460685429, -0.15865525393145707, 1.9544997361036416,
                -0.00404969409489031, 0.34573123063700656, 0.0]
    out = gelu(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, tanh_form, rtol=2e-6, atol=1e-7)
    assert abs(float(out[0]) - erf_form[0]) > 1e-4       # and not the exact erf gelu


@settings(max_examples=50, deadline=None)
@given(st.floats(-20, 20, width=32))
def test_gelu_matches_tanh_formula_and_is_odd_around_x(v):
    x = np.array([v, -v], np.float32)
    out = gelu(x).astype(np.float64)
    np.testing.assert_allclose(out[0], gelu_tanh64(float(x[0])), rtol=1e-5, atol=1e-6)
    # gelu(x) - gelu(-x) == x for the tanh form (tanh is odd)
    assert abs((out[0] - out[1]) - float(x[0])) <= 1e-5 * max(1.0, abs(v))


def route_reference(x, router, k):
    """Float64 softmax over all experts, top-k by (probability desc, index asc)."""
    x, router = np.asarray(x, np.float64), np.asarray(router, np.float64)
    T, E = x.shape[0], router.shape[1]
    probs, ids = np.zeros((T, E)), np.zeros((T, k), int)
    for t in range(T):
        logits = [float(np.dot(x[t], router[:, e])) for e in range(E)]
        probs[t] = softmax64(logits)
        ids[t] = sorted(range(E), key=lambda e: (-probs[t, e], e))[:k]
    return probs, ids


def separated(probs, k, gap=1e-4):
    """Whether float32 vs float64 rounding cannot change the top-k set or its order."""
    s = np.sort(probs, axis=-1)[:, ::-1]
    return np.all(s[:, :k] - s[:, 1:k + 1] > gap)


@FAST
@given(seed=SEEDS, T=st.integers(1, 8), D=st.sampled_from([4, 16]), spread=st.floats(0.1, 5))
def test_route_gates_are_top2_softmax_not_renormalised(seed, T, D, spread):
    rng = rng_of(seed)
    x = rng.standard_normal((T, D)).astype(np.float32)
    router = (rng.standard_normal((D, 8)) * spread / math.sqrt(D)).astype(np.float32)
    probs, ids, gates = route(x, router, 2)
    ref_probs, ref_ids = route_reference(x, router, 2)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-7)
    assume(separated(ref_probs, 2))
    np.testing.assert_array_equal(ids, ref_ids)
    ref_gates = np.take_along_axis(ref_probs, ref_ids, axis=-1)
    np.testing.assert_allclose(gates, ref_gates, rtol=1e-5, atol=1e-7)
    # not renormalised: the gates sum to what the top two hold, which is less than 1
    np.testing.assert_allclose(gates.sum(-1), ref_gates.sum(-1), rtol=1e-5)
    # (unless the other six experts hold less than float32 can show next to 1)
    assert np.all((gates.sum(-1) < 1 - 1e-6) | (1 - ref_gates.sum(-1) < 1e-6))


def test_route_uniform_router_gives_eighths_and_lowest_ids():
    probs, ids, gates = route(np.ones((3, 4), np.float32), np.zeros((4, 8), np.float32), 2)
    np.testing.assert_allclose(probs, 1 / 8, rtol=1e-6)
    np.testing.assert_array_equal(ids, [[0, 1]] * 3)
    np.testing.assert_allclose(gates, 1 / 8, rtol=1e-6)        # gates sum to 1/4, not 1


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(st.lists(st.integers(-3, 3), min_size=8, max_size=8),
                       min_size=1, max_size=6))
def test_route_ties_pick_the_lower_index(logits):
    # x = one-hot rows and an integer router make the router logits exact small integers,
    # so equal logits give bit-identical probabilities: exact ties
    logits = np.array(logits, np.float32)
    T = len(logits)
    x = np.eye(T, dtype=np.float32)
    probs, ids, gates = route(x, logits, 2)
    for t in range(T):
        want = sorted(range(8), key=lambda e: (-logits[t, e], e))[:2]
        assert list(ids[t]) == want
        assert gates[t, 0] == probs[t, want[0]] and gates[t, 1] == probs[t, want[1]]


def bf16_bits_to_f64(bits):
    """Independent of minigrok: reinterpret uint16 bits as ml_dtypes bfloat16."""
    return np.asarray(bits, np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)


def dequantize_reference(qw):
    """float64 [E, in, out] from a stacked QuantizedWeight8bit, block by block."""
    w = np.asarray(qw.weight, np.float64)
    s = bf16_bits_to_f64(qw.scales)                        # [E, B, out]
    E, n_in, n_out = w.shape
    rows = n_in // s.shape[1]
    out = np.empty_like(w)
    for e in range(E):
        for r in range(n_in):
            out[e, r] = w[e, r] * s[e, r // rows]
    return out


def moe_dense_reference(x, router, w1, wv, w2, k=2):
    """Every expert on every token, float64, with gate 0 for the experts not chosen."""
    x = np.asarray(x, np.float64)
    probs, ids = route_reference(x, router, k)
    T, D = x.shape
    E = w1.shape[0]
    out = np.zeros((T, D))
    for t in range(T):
        for e in range(E):
            hidden = np.array([gelu_tanh64(v) for v in x[t] @ w1[e]]) * (x[t] @ wv[e])
            y = hidden @ w2[e]
            weight = probs[t, e] if e in ids[t] else 0.0
            out[t] += weight * y
    return out, probs


@pytest.mark.parametrize("quantised", [False, True])
@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, T=st.integers(1, 24), D=st.sampled_from([8, 16]), F=st.sampled_from([8, 24]),
       expert_rows=st.integers(1, 4))
def test_moe_equals_dense_mixture_of_all_experts(seed, T, D, F, quantised, expert_rows):
    # expert_rows: tokens per expert call (moe's expert_rows), so that an expert chosen by
    # several tokens takes them in blocks, the last one partial
    rng = rng_of(seed)
    x = rng.standard_normal((T, D)).astype(np.float32)
    router = (rng.standard_normal((D, 8)) * 2 / math.sqrt(D)).astype(np.float32)
    w1 = (rng.standard_normal((8, D, F)) / math.sqrt(D)).astype(np.float32)
    wv = (rng.standard_normal((8, D, F)) / math.sqrt(D)).astype(np.float32)
    w2 = (rng.standard_normal((8, F, D)) / math.sqrt(F)).astype(np.float32)
    if quantised:
        args = (quant.quantize(w1), quant.quantize(wv), quant.quantize(w2, blocks=8))
        assert args[2].scales.shape == (8, 8, D)
        ref_weights = [dequantize_reference(a) for a in args]
    else:
        args = (w1, wv, w2)
        ref_weights = [a.astype(np.float64) for a in args]
    out, probs, ids, gates = moe(x, router, *args, num_selected=2, expert_rows=expert_rows)
    ref, ref_probs = moe_dense_reference(x, router, *ref_weights)
    assume(separated(ref_probs, 2))
    assert out.shape == (T, D) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_moe_gates_are_not_renormalised_in_the_output():
    # uniform router: experts 0 and 1 are chosen with gates 1/8 each; the output is
    # (y0 + y1) / 8, not (y0 + y1) / 2
    rng = rng_of(3)
    D, F, T = 8, 8, 3
    x = rng.standard_normal((T, D)).astype(np.float32)
    w1, wv = (rng.standard_normal((8, D, F)).astype(np.float32) for _ in range(2))
    w2 = rng.standard_normal((8, F, D)).astype(np.float32)
    out, _, ids, _ = moe(x, np.zeros((D, 8), np.float32), w1, wv, w2, num_selected=2)
    np.testing.assert_array_equal(ids, [[0, 1]] * T)
    x64 = x.astype(np.float64)
    ys = [np.vectorize(gelu_tanh64)(x64 @ w1[e]) * (x64 @ wv[e]) @ w2[e] for e in (0, 1)]
    np.testing.assert_allclose(out, (ys[0] + ys[1]) / 8, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- int8 weights

float32_bits = st.integers(0, 2**32 - 1).map(lambda b: np.array([b], np.uint32).view(np.float32)[0])
special = st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17e-38,
                           3.3895e38, 3.4028235e38, -3.4028235e38, 1.00390625, 1.01171875])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(float32_bits, special,
                                 st.floats(width=32, allow_nan=True, allow_infinity=True)),
                       min_size=1, max_size=20))
def test_bf16_round_trip_matches_ml_dtypes(values):
    x = np.array(values, np.float32)
    bits = quant.f32_to_bf16(x)
    assert bits.dtype == np.uint16
    expected = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(quant.bf16_to_f32(bits), expected.astype(np.float32))
    finite_or_inf = ~np.isnan(x)
    np.testing.assert_array_equal(bits[finite_or_inf], expected.view(np.uint16)[finite_or_inf])


def test_bf16_rounds_half_to_even():
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1.0);
    # 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], np.float32)
    np.testing.assert_array_equal(quant.bf16_to_f32(quant.f32_to_bf16(x)),
                                  [1.0, 1 + 2**-6, 1 + 2**-7])


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, blocks=st.sampled_from([1, 2, 8]), per_block=st.integers(1, 6),
       n_out=st.integers(1, 7), lead=st.sampled_from([(), (3,)]),
       magnitude=st.sampled_from([1e-20, 1e-3, 1.0, 1e4, 1e30]))
def test_quantize_error_is_at_most_half_a_scale(seed, blocks, per_block, n_out, lead, magnitude):
    rng = rng_of(seed)
    n_in = blocks * per_block
    w = (rng.standard_normal(lead + (n_in, n_out)) * magnitude).astype(np.float32)
    w.reshape(-1)[rng.integers(0, w.size)] = 0.0
    qw = quant.quantize(w, blocks=blocks)
    assert qw.weight.shape == w.shape and qw.scales.shape == lead + (blocks, n_out)
    assert np.abs(qw.weight.astype(np.int32)).max() <= 127
    s = bf16_bits_to_f64(qw.scales)                                    # [..., B, out]
    s_rows = np.repeat(s, per_block, axis=-2)                          # [..., in, out]
    approx = qw.weight.astype(np.float64) * s_rows
    err = np.abs(approx - w.astype(np.float64))
    assert np.all(err <= s_rows / 2 * (1 + 1e-6))
    # the scale is the block's absmax / 127 rounded to bf16 (so 127 is actually used)
    absmax = np.abs(w.astype(np.float64)).reshape(lead + (blocks, per_block, n_out)).max(-2)
    # (an all-zero block keeps a tiny positive placeholder scale, and all-zero weights)
    nonzero = absmax > 0
    np.testing.assert_allclose(s[nonzero], absmax[nonzero] / 127, rtol=2**-8)
    assert np.all(s[~nonzero] > 0) and np.all(s[~nonzero] < 1e-30)
