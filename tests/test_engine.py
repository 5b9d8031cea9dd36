"""The engine computes what the reference computes: its weights' products, its CPU tiles, and
a whole forward pass through the engine's parameters and layer function.

The reference defines ``linear(x, w)`` as ``x @ dequantize(w)`` and defers to a weight that
brings its own product (engine/weights.py); these tests hold every such product to that
definition, with bounds from float32 arithmetic: a sum of n products rounded in float32 is
within n * 2^-24 * (|x| @ |W|) of the exact sum, whatever order it adds them in.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrok
from minigrok.engine import cpu, runtime
from minigrok.engine.weights import Int8Weight, TiedEmbedding, product
from minigrok.formats.checkpoint import model_params, open_checkpoint
from minigrok.reference import quant
from minigrok.reference.model import forward, unembed

SEEDS = st.integers(0, 2**32 - 1)


def exact_and_bound(x, qw):
    """(x @ dequantize(qw) in float64, the float32 rounding bound of any order of its sums)."""
    dense = quant.dequantize(qw).astype(np.float64)          # exact: int8 x bf16 fits float32
    n = qw.weight.shape[0]
    return x.astype(np.float64) @ dense, (n + 2) * 2.0**-24 * (np.abs(x) @ np.abs(dense))


@st.composite
def quantised_problem(draw):
    """A weight with 1 or 8 row blocks whose scales really differ, tiles smaller than a block."""
    blocks = draw(st.sampled_from([1, 8]))
    per_block = draw(st.integers(2, 6))
    n_in = 8 * per_block if blocks == 8 else draw(st.integers(1, 6)) * 8
    n_out = draw(st.integers(1, 200))
    T = draw(st.integers(1, 5))
    chunk = draw(st.integers(1, n_in // blocks - 1))         # rows per tile, within a block
    tile_cols = draw(st.integers(1, n_out))                  # columns per tile
    magnitude = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    threads = draw(st.integers(1, 3))                        # sharing columns, 64 at a time
    return blocks, n_in, n_out, T, chunk, tile_cols, threads, magnitude, draw(SEEDS)


@settings(max_examples=60, deadline=None)
@given(problem=quantised_problem())
def test_numpy_tiles_equal_x_times_dequantized_weight(problem):
    blocks, n_in, n_out, T, chunk, tile_cols, threads, magnitude, seed = problem
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_in, n_out)) * magnitude).astype(np.float32)
    w *= np.repeat(rng.uniform(0.1, 10, blocks), n_in // blocks)[:, None].astype(np.float32)
    qw = quant.quantize(w, blocks=blocks)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    out = cpu.int8_matmul(x, qw.weight, quant.bf16_to_f32(qw.scales), chunk_rows=chunk,
                          threads=threads, tile_elements=chunk * tile_cols)
    assert out.shape == (T, n_out) and out.dtype == np.float32
    ref, bound = exact_and_bound(x, qw)
    assert np.all(np.abs(out - ref) <= bound + 1e-30)


@settings(max_examples=10, deadline=None)
@given(T=st.sampled_from([1, 3, 9, 20]), blocks=st.sampled_from([1, 8]), seed=SEEDS)
def test_engine_weight_products_equal_the_reference_linear(T, blocks, seed):
    # 1024 x 1536 is over cpu.CHUNK_ELEMENTS: the compiled kernel (up to 8 tokens, where there
    # is a compiler) or numpy's tiles, never the widened matrix; T = 20 takes the tiles
    rng = np.random.default_rng(seed)
    qw = quant.quantize(rng.standard_normal((1024, 1536)).astype(np.float32), blocks=blocks)
    assert qw.weight.size > cpu.CHUNK_ELEMENTS
    x = rng.standard_normal((T, 1024)).astype(np.float32)
    ref, bound = exact_and_bound(x, qw)
    for out in (quant.linear(x, Int8Weight(*qw)), product(x, *qw)):
        assert out.shape == (T, 1536) and out.dtype == np.float32
        assert np.all(np.abs(out - ref) <= bound)
    # the reference's own linear on the plain weight obeys the same bound
    assert np.all(np.abs(quant.linear(x, qw) - ref) <= bound)


def test_an_expert_view_of_an_engine_weight_is_the_experts_weight():
    rng = np.random.default_rng(1)
    stacked = quant.quantize(rng.standard_normal((3, 16, 24)).astype(np.float32), blocks=8)
    engine = Int8Weight(*stacked)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    for e in range(3):
        view = engine[e]
        assert view.weight.base is not None                   # a view, nothing copied
        plain = quant.QuantizedWeight8bit(stacked.weight[e], stacked.scales[e])
        np.testing.assert_array_equal(view.matmul(x), quant.linear(x, plain))


def test_the_tied_embedding_of_an_unaligned_matrix_unembeds_like_the_aligned_one(tiny_dir):
    ck = open_checkpoint(tiny_dir)
    cfg = ck.config
    E = np.ascontiguousarray(ck.params["language_model/in_out_embed/embeddings"])
    raw = np.empty(E.nbytes + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(E.shape)
    unaligned[...] = E
    assert not unaligned.flags.aligned
    h = np.random.default_rng(2).standard_normal((3, cfg.emb_size)).astype(np.float32)
    want = unembed({"in_out_embed": E}, cfg, h)
    got = unembed({"in_out_embed": TiedEmbedding(unaligned)}, cfg, h)
    # the same sums: each logit is one row's dot product, BLAS-added in both
    bound = (cfg.emb_size + 2) * 2.0**-24 * (np.abs(h) @ np.abs(E).T) * cfg.output_multiplier_scale
    assert np.all(np.abs(got - want) <= 2 * bound)
    np.testing.assert_array_equal(TiedEmbedding(unaligned)[np.array([5, 7])], E[[5, 7]])


def test_for_cpu_wraps_quantised_weights_and_keeps_the_tree(tiny_dir):
    ck = open_checkpoint(tiny_dir)
    params = model_params(ck.params, ck.config.num_layers)
    engine = runtime.for_cpu(params)
    assert engine.keys() == params.keys() and len(engine["layers"]) == len(params["layers"])
    for mine, theirs in zip(engine["layers"], params["layers"]):
        assert mine.keys() == theirs.keys()
        for block in ("multi_head_attention", "moe"):
            for name, w in mine[block].items():
                assert isinstance(w, Int8Weight)
                assert w.weight is theirs[block][name].weight           # read where it lies
        assert mine["router"].flags.aligned and np.array_equal(mine["router"], theirs["router"])
    # the layer the CPU runs: the reference's, its decode steps' products batched
    from minigrok.engine.cpu_decode import cpu_decode_layer
    assert runtime.prepare(params, ck.config)[1] is cpu_decode_layer


def test_the_engine_forward_equals_the_reference_forward(tiny_dir):
    # minigrok.load runs the engine's parameters and layer; the reference runs the
    # checkpoint's own tree through decoder_layer. Tiny's matrices are small enough that
    # the engine multiplies them as the reference does, so the logits agree bit for bit.
    m = minigrok.load(tiny_dir)
    ck = open_checkpoint(tiny_dir)
    reference = model_params(ck.params, ck.config.num_layers)
    tokens = np.array([5, 17, 300, 0, 9])
    np.testing.assert_array_equal(m.logits(tokens), forward(reference, ck.config, tokens))


# -- the CPU's decode step: its products four at a time ----------------------------------------

def engine_layer(rng, cfg, F: int) -> dict:
    """A decoder layer of random engine weights (Int8Weight, bf16 scales) for ``cfg``, the
    experts' hidden size F; the output projection and the down products in 8 scale blocks."""
    D, H, K, d, E = (cfg.emb_size, cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size,
                     cfg.num_experts)

    def q8(shape, blocks):
        scales = rng.uniform(0.5, 2, shape[:-2] + (blocks, shape[-1])) / 64
        return Int8Weight(rng.integers(-128, 128, shape, dtype=np.int8),
                          quant.f32_to_bf16(scales.astype(np.float32)))

    return {"multi_head_attention": {"query": q8((D, H * d), 1), "key": q8((D, K * d), 1),
                                     "value": q8((D, K * d), 1), "linear": q8((H * d, D), 8)},
            "moe": {"linear": q8((E, D, F), 1), "linear_v": q8((E, D, F), 1),
                    "linear_1": q8((E, F, D), 8)},
            "router": (rng.standard_normal((D, E)) / np.sqrt(D)).astype(np.float32),
            **{n: rng.uniform(0.5, 1.5, D).astype(np.float32)
               for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")}}


@settings(max_examples=6, deadline=None)
@given(prompt=st.integers(1, 40), pads=st.lists(st.booleans(), min_size=3, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_the_cpu_decode_step_is_the_reference_layer_bit_for_bit(prompt, pads, seed):
    # Weights large enough for the compiled kernel (the query, the experts' matrices) beside
    # small ones that the reference's dequantise-and-multiply takes (key, value: 1280 x 256):
    # three decode steps through cpu_decode_layer and through decoder_layer, each with its
    # own cache, give the same bits, the products going in three batches a step.
    import dataclasses

    from minigrok.engine import cpu_decode, native, weights
    from minigrok.reference.attention import new_cache
    from minigrok.reference.config import preset
    from minigrok.reference.layer import decoder_layer

    cfg = dataclasses.replace(preset("tiny"), emb_size=1280, key_size=128, num_q_heads=10,
                              num_kv_heads=2, num_experts=4)
    rng = np.random.default_rng(seed)
    layer = engine_layer(rng, cfg, F=1024)
    T = prompt + len(pads)
    h = (rng.standard_normal((T, cfg.emb_size)) * 3).astype(np.float32)
    keep = np.array([True] * prompt + [not p for p in pads])
    caches = [new_cache(1, T, cfg.num_kv_heads, cfg.key_size) for _ in range(2)]
    for cache in caches:
        decoder_layer(h[:prompt], layer, cfg, keep=keep[:prompt], cache=cache)
    batches, made = [], weights.native_matmuls

    def counted(problems, *args, **kw):
        batches.append(len(problems))
        return made(problems, *args, **kw)

    weights.native_matmuls = counted
    try:
        for t in range(prompt, T):
            want = decoder_layer(h[t:t + 1], layer, cfg, keep=keep[t:t + 1], offset=t,
                                 cache=caches[0])
            got = cpu_decode.cpu_decode_layer(h[t:t + 1], layer, cfg, keep=keep[t:t + 1],
                                              offset=t, cache=caches[1])
            np.testing.assert_array_equal(got, want)
    finally:
        weights.native_matmuls = made
    for name in ("k", "v", "keep"):
        np.testing.assert_array_equal(caches[1][name][0], caches[0][name][0])
    # per step: the query alone (key and value are small), the 4 up products, the 2 down;
    # without the compiled kernel (MINIGROK_NATIVE=0) every product goes one by one
    assert batches == ([1, 4, 2] * len(pads) if native.native_kernel() else [])
