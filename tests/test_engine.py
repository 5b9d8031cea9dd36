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


def test_the_engine_forward_equals_the_reference_forward(tiny_dir):
    # minigrok.load runs the engine's parameters and layer; the reference runs the
    # checkpoint's own tree through decoder_layer. Tiny's matrices are small enough that
    # the engine multiplies them as the reference does, so the logits agree bit for bit.
    m = minigrok.load(tiny_dir)
    ck = open_checkpoint(tiny_dir)
    reference = model_params(ck.params, ck.config.num_layers)
    tokens = np.array([5, 17, 300, 0, 9])
    np.testing.assert_array_equal(m.logits(tokens), forward(reference, ck.config, tokens))
