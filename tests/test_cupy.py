"""The same component code on CuPy arrays: logits equal NumPy's (GPU only).

Skipped (and reported as skipped) where CuPy or a GPU is missing.
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    cupy.cuda.runtime.getDeviceCount()
except Exception as e:                                       # CuPy installed, no usable GPU
    pytest.skip(f"no CUDA device: {e}", allow_module_level=True)

import minigrok  # noqa: E402

TOKENS = [5, 17, 0, 300, 9, 1000, 77, 12345, 3, 4, 2, 131071]


def test_cuda_logits_equal_numpy_logits(tiny_dir):
    cpu = minigrok.load(tiny_dir).logits(TOKENS)
    gpu = minigrok.load(tiny_dir, device="cuda").logits(TOKENS)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    assert np.abs(gpu - cpu).max() / np.abs(cpu).max() < 1e-4


def test_cuda_generation_equals_numpy_generation(tiny_dir):
    kwargs = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5)
    cpu = list(minigrok.load(tiny_dir).generate_ids([5, 17, 300], **kwargs))
    gpu = list(minigrok.load(tiny_dir, device="cuda").generate_ids([5, 17, 300], **kwargs))
    assert gpu == cpu


# -- the int8 GEMV kernel ------------------------------------------------------------------------

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minigrok.engine import decode, gemv  # noqa: E402
from minigrok.engine.placement import reserve_bytes  # noqa: E402
from minigrok.engine.weights import Int8Weight, StreamedWeight, product  # noqa: E402
from minigrok.formats.checkpoint import layer_bytes  # noqa: E402
from minigrok.reference import moe, quant  # noqa: E402
from minigrok.reference.config import preset  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(blocks=st.sampled_from([1, 8]), rows=st.integers(1, 300),
       n_out=st.integers(1, 80).map(lambda k: 16 * k), seed=st.integers(0, 2**32 - 1))
def test_int8_gemv_equals_x_times_dequantized_weight(blocks, rows, n_out, seed):
    # rows per scale block from 1 to 300: block rows that 256 does not divide, and column
    # counts around the 512-column tile, are where an indexing slip would show
    rng = np.random.default_rng(seed)
    n_in = blocks * rows
    w = rng.integers(-128, 128, (n_in, n_out), dtype=np.int8)   # -128: the widening's edge
    scales = quant.f32_to_bf16(rng.uniform(-2, 2, (blocks, n_out)).astype(np.float32))
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    dense = (w.astype(np.float64).reshape(blocks, rows, n_out)
             * quant.bf16_to_f32(scales).astype(np.float64)[:, None, :]).reshape(n_in, n_out)
    ref = x.astype(np.float64) @ dense
    bound = np.abs(x).astype(np.float64) @ np.abs(dense)
    got = gemv.int8_gemv(cupy.asarray(x), cupy.asarray(w), cupy.asarray(scales)).get()
    assert got.shape == (1, n_out) and got.dtype == np.float32
    assert np.all(np.abs(got - ref) <= 1e-5 * bound + 1e-30)
    # weights.product (an Int8Weight's matmul) takes the kernel for one token,
    # int8_gemv_tokens for a few (the last block padded), gemv.int8_matmul_gpu for many
    qw = Int8Weight(cupy.asarray(w), cupy.asarray(scales))
    assert np.array_equal(product(cupy.asarray(x), qw.weight, qw.scales).get(), got)
    assert np.array_equal(qw.matmul(cupy.asarray(x)).get(), got)
    for T in (gemv.GEMV_TOKENS + 3, gemv.GEMV_MAX_TOKENS + 1):
        xs = np.concatenate([x, rng.standard_normal((T - 1, n_in)).astype(np.float32) * 100])
        many = qw.matmul(cupy.asarray(xs)).get()
        assert many.shape == (T, n_out) and many.dtype == np.float32
        assert np.all(np.abs(many - xs.astype(np.float64) @ dense)
                      <= 1e-5 * (np.abs(xs).astype(np.float64) @ np.abs(dense)) + 1e-30), T
    # The routed experts' products, their indices read on the GPU: w is expert 2 of the
    # stacked A and expert 0 of B, the other experts other matrices.
    def stack(first, second, third):
        return Int8Weight(*(cupy.asarray(np.stack(m)) for m in zip(first, second, third)))

    def other():
        return (rng.integers(-128, 128, w.shape, dtype=np.int8),
                quant.f32_to_bf16(rng.uniform(-2, 2, scales.shape).astype(np.float32)))

    A, B = stack(other(), other(), (w, scales)), stack((w, scales), other(), other())
    ids = cupy.asarray([2, 1], dtype=cupy.int32)

    def check(y, x_rows, weights):        # weights[i]: the expert matrix row i must be by
        assert y.shape == (len(weights), n_out) and y.dtype == np.float32
        for row, xr, qw_i in zip(y.get(), x_rows, weights):
            d = quant.dequantize(quant.QuantizedWeight8bit(qw_i.weight.get(), qw_i.scales.get()))
            ref = xr.astype(np.float64) @ d.astype(np.float64)
            assert np.all(np.abs(row - ref) <= 1e-5 * (np.abs(xr) @ np.abs(d)) + 1e-30)

    e = [moe.expert_weight(W, i) for W in (A, B) for i in (2, 1)]        # A2 A1 B2 B1
    check(gemv.int8_gemv_routed(cupy.asarray(x), (A, B), ids), [x[0]] * 4,
          [e[0], e[2], e[1], e[3]])                    # one x: A, B of expert 2, then of 1
    x2 = rng.standard_normal((2, n_in)).astype(np.float32)
    check(gemv.int8_gemv_routed(cupy.asarray(x2), (A,), ids), x2, [e[0], e[1]])
    assert np.array_equal(gemv.int8_gemv_routed(cupy.asarray(x), (A,), ids[:1]).get()[0],
                          gemv.int8_gemv_routed(cupy.asarray(x), (B,), ids[1:] - 1).get()[0])


@settings(max_examples=20, deadline=None)
@example(blocks=8, rows=40, matrices=[(528, False), (64, True), (32, False)], seed=0)
@given(blocks=st.sampled_from([1, 8]), rows=st.integers(1, 120),
       matrices=st.lists(st.tuples(st.integers(1, 80).map(lambda k: 16 * k), st.booleans()),
                         min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_three_products_in_one_launch(blocks, rows, matrices, seed):
    # int8_gemv_three (a decode step's query, key and value): widths that differ, each
    # matrix with one scale block or `blocks` of them
    rng = np.random.default_rng(seed)
    n_in = blocks * rows
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    qws = [quant.QuantizedWeight8bit(
        rng.integers(-128, 128, (n_in, n_out), dtype=np.int8),
        quant.f32_to_bf16(rng.uniform(-2, 2, (blocks if split else 1, n_out)).astype(np.float32)))
        for n_out, split in matrices]
    got = gemv.int8_gemv_three(cupy.asarray(x), [
        Int8Weight(cupy.asarray(q.weight), cupy.asarray(q.scales)) for q in qws])
    assert len(got) == len(qws)
    for y, q in zip(got, qws):
        d = quant.dequantize(q).astype(np.float64)
        assert y.shape == (1, q.weight.shape[1]) and y.dtype == np.float32
        assert np.all(np.abs(y.get() - x @ d) <= 1e-5 * (np.abs(x) @ np.abs(d)) + 1e-30)


# -- decoding: one token through a layer in a few kernels ----------------------------------------

@settings(max_examples=25, deadline=None)
@given(pads=st.lists(st.booleans(), min_size=1, max_size=40), layer=st.integers(0, 11),
       seed=st.integers(0, 2**32 - 1))
def test_decode_layer_equals_the_teaching_layer(tiny_dir, pads, layer, seed):
    # pads: which tokens are padding (keys never attended to); all of them padding is the
    # official code's uniform average over every key
    from minigrok.reference.attention import new_cache
    from minigrok.reference.layer import decoder_layer

    m = minigrok.load(tiny_dir, device="cuda")   # engine weights: Int8Weight on the GPU
    cfg, params = m.config, m.params["layers"][layer]
    assert isinstance(params["multi_head_attention"]["query"], Int8Weight)
    rng = np.random.default_rng(seed)
    T = len(pads)
    h = cupy.asarray(rng.standard_normal((T, cfg.emb_size)).astype(np.float32) * 3)
    keep = cupy.asarray(~np.array(pads))
    caches = [new_cache(1, T + 1, cfg.num_kv_heads, cfg.key_size) for _ in range(2)]
    for cache in caches:                     # the same earlier tokens in both caches
        if T > 1:
            decoder_layer(h[:-1], params, cfg, keep=keep[:-1], cache=cache)
    assert decode.decode_fits(h[-1:], caches[1], T - 1, cfg)
    want = decoder_layer(h[-1:], params, cfg, keep=keep[-1:], offset=T - 1, cache=caches[0],
                         index=0)              # the reference layer (no fast path of its own)
    got = decode.decode_layer(h[-1:], params, cfg, keep=keep[-1:], offset=T - 1, cache=caches[1],
                            index=0)
    assert got.shape == (1, cfg.emb_size) and got.dtype == np.float32
    want, got = want.get(), got.get()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    for name in ("k", "v", "keep"):          # the token's key and value written alike
        assert np.allclose(caches[1][name][0].get(), caches[0][name][0].get(), rtol=1e-5,
                           atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(prompt=st.integers(1, 70), layer=st.integers(0, 11), pad=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_decode_steps_replayed_as_a_graph_equal_the_teaching_layer(tiny_dir, prompt, layer, pad,
                                                                   seed):
    # A layer's plan over 5 decode steps after a prompt, on two caches in turn (bench
    # alternates two): for each, its launches bound at the first step, a CUDA graph replayed
    # from the second on, reading each step's position from the GPU (a graph holding the
    # first step's would write every token to one row). Nothing is allocated once the graphs
    # are made. Step `pad` is a padding token of the first cache; prompts up to 70 rows go
    # past one attention block (the tiny model's 64 rows).
    from minigrok.reference.attention import new_cache
    from minigrok.reference.layer import decoder_layer

    m = minigrok.load(tiny_dir, device="cuda")
    cfg, params = m.config, m.params["layers"][layer]
    rng = np.random.default_rng(seed)
    steps = 5
    T = prompt + steps
    h = [cupy.asarray(rng.standard_normal((T, cfg.emb_size)).astype(np.float32) * 3)
         for _ in range(2)]
    keep = [cupy.asarray(np.arange(T) != prompt + pad), cupy.ones(T, dtype=bool)]
    caches = [[new_cache(1, T, cfg.num_kv_heads, cfg.key_size) for _ in range(2)]
              for _ in range(2)]                       # per sequence: the reference's, the plan's
    for i in range(2):
        for cache in caches[i]:
            decoder_layer(h[i][:prompt], params, cfg, keep=keep[i][:prompt], cache=cache)
    plan = decode.decode_plan(decode.decode_scratch(params, cfg, cfg.sequence_len))
    pool, allocated = cupy.get_default_memory_pool(), []

    def counting(nbytes):
        allocated.append(nbytes)
        return pool.malloc(nbytes)

    for t in range(prompt, T):
        for i in range(2):
            want = decoder_layer(h[i][t:t + 1], params, cfg, keep=keep[i][t:t + 1], offset=t,
                                 cache=caches[i][0]).get()
            x, keep_t = h[i][t:t + 1].copy(), keep[i][t:t + 1].copy()
            cupy.cuda.set_allocator(counting if t > prompt + 1 else pool.malloc)
            try:
                got = decode.decode_layer(x, params, cfg, keep=keep_t, offset=t,
                                          cache=caches[i][1], index=0, plan=plan)
            finally:
                cupy.cuda.set_allocator(pool.malloc)
            assert np.abs(got.get() - want).max() <= 1e-5 * np.abs(want).max(), (t, i)
        bindings = list(plan["bindings"].values())
        assert len(bindings) == 2 and all((b["graph"] is not None) == (t > prompt)
                                          for b in bindings)
    assert allocated == []
    for pair in caches:                      # every token's key and value written alike
        for name in ("k", "v", "keep"):
            got, want = pair[1][name][0].get(), pair[0][name][0].get()
            assert np.abs(got.astype(float) - want).max() <= 1e-5 * np.abs(want).max()
    # a scratch made for shorter caches (one attention block): a cache of more blocks goes
    # without the plan, with the same numbers
    short = decode.decode_plan(decode.decode_scratch(params, cfg, 1))
    pair = [new_cache(1, T + 64, cfg.num_kv_heads, cfg.key_size) for _ in range(2)]
    for cache in pair:
        decoder_layer(h[0][:-1], params, cfg, keep=keep[0][:-1], cache=cache)
    want = decoder_layer(h[0][-1:], params, cfg, keep=keep[0][-1:], offset=T - 1,
                         cache=pair[0]).get()
    got = decode.decode_layer(h[0][-1:], params, cfg, keep=keep[0][-1:], offset=T - 1,
                              cache=pair[1], index=0, plan=short).get()
    assert not short["bindings"] and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_a_failed_capture_decodes_one_launch_at_a_time(tiny_dir, monkeypatch):
    # a CuPy or driver that cannot capture the launches: a warning, then the same tokens
    def refuse(steps):
        raise RuntimeError("stream capture not supported")

    monkeypatch.setattr(decode, "_capture", refuse)
    kwargs = dict(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    with pytest.warns(UserWarning, match="decoding without CUDA graphs: the capture failed"):
        gpu = list(minigrok.load(tiny_dir, device="cuda").generate_ids([5, 17, 300], **kwargs))
    assert gpu == list(minigrok.load(tiny_dir).generate_ids([5, 17, 300], **kwargs))


@settings(max_examples=10, deadline=None)
@given(S=st.integers(1, 3000), kept=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
       seed=st.integers(0, 2**32 - 1))
def test_decode_attention_over_a_long_cache(S, kept, seed):
    # Grok-1's heads over up to 3000 cached rows: many blocks of decode.ATTENTION_CHUNK rows
    # and their combination; some padding (whole blocks of it when kept is 0.01) or all of
    # it. Rows past S hold NaN: attend must not read them.
    from minigrok.reference.attention import context

    cfg = preset("grok-1")
    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, H * d)).astype(np.float32) * 3
    k, v = (rng.standard_normal((S + 3, K, d)).astype(np.float32) for _ in range(2))
    keep = np.append(rng.random(S) < kept, [True] * 3)
    k[S:], v[S:] = np.nan, np.nan
    got = decode.attend(*map(cupy.asarray, (q, k, v, keep)), S, cfg).get()
    want = context(q.reshape(1, K, H // K, d), k[:S], v[:S], keep[:S], S - 1,
                   cfg.attn_output_multiplier).reshape(1, H * d)
    assert got.shape == (1, H * d) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# -- the memory plan: streamed layers, several GPUs ----------------------------------------------

def test_streamed_layers_compute_what_resident_ones_do(tiny_dir, monkeypatch):
    import functools

    from minigrok.engine import stream
    from minigrok.reference import layer as reference_layer

    # experts take one token per call (the reference layer's moe with expert_rows=1, on the
    # GPU and on the CPU alike), yet each streamed weight crosses to the GPU once
    monkeypatch.setattr(reference_layer, "moe", functools.partial(moe.moe, expert_rows=1))
    cfg = preset("tiny")
    # room for the embeddings, the streaming reserve and 3 of the 12 layers
    limit = cfg.vocab_size * cfg.emb_size * 4 + reserve_bytes(cfg, True) + 3.5 * layer_bytes(cfg)
    m = minigrok.load(tiny_dir, device="cuda", gpu_memory=limit / 2**30)
    resident = [not isinstance(layer["multi_head_attention"]["query"], StreamedWeight)
                for layer in m.params["layers"]]
    assert resident == [True] * 3 + [False] * 9
    assert cupy.get_array_module(m.params["layers"][5]["moe"]["linear"].weight) is np   # host
    assert cupy.get_array_module(m.params["layers"][2]["moe"]["linear"].weight) is cupy
    streamer = m.params["layers"][5]["moe"]["linear"].streamer
    assert all(w.streamer is streamer for layer in m.params["layers"][3:]
               for group in ("multi_head_attention", "moe") for w in layer[group].values())
    copies, copy = [], streamer.copy
    monkeypatch.setattr(streamer, "copy",
                        lambda qw, *a: copies.append(stream._key(qw)) or copy(qw, *a))
    cpu_model = minigrok.load(tiny_dir)

    # one streamed layer's MoE alone, a token per expert call: each chosen expert's three
    # matrices cross exactly once, and nothing else does
    host, experts = cpu_model.params["layers"][5], m.params["layers"][5]["moe"]
    x = np.random.default_rng(0).standard_normal((len(TOKENS), cfg.emb_size)).astype(np.float32)
    out, _, ids, _ = moe.moe(cupy.asarray(x), m.params["layers"][5]["router"],
                             *(experts[n] for n in ("linear", "linear_v", "linear_1")),
                             num_selected=cfg.num_selected_experts, expert_rows=1)
    want = moe.moe(x, host["router"], **host["moe"], num_selected=cfg.num_selected_experts,
                   expert_rows=1)[0]
    assert np.abs(out.get() - want).max() <= 1e-5 * np.abs(want).max()
    chosen = sorted(set(ids.get().ravel().tolist()))
    assert len(chosen) > 1 and sorted(copies) == sorted(
        stream._key(experts[n][e]) for e in chosen for n in ("linear", "linear_v", "linear_1"))

    # the whole model
    copies.clear()
    cpu = cpu_model.logits(TOKENS)
    assert np.abs(m.logits(TOKENS) - cpu).max() / np.abs(cpu).max() < 1e-4
    assert copies and len(copies) == len(set(copies))
    kwargs = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5)
    assert list(m.generate_ids([5, 17, 300], **kwargs)) == \
        list(cpu_model.generate_ids([5, 17, 300], **kwargs))


@settings(max_examples=10, deadline=None)
@given(n_bytes=st.integers(1, 20000), stage=st.sampled_from([4096, 4099, 65536]),
       seed=st.integers(0, 2**32 - 1))
def test_streamed_copies_arrive_whole(n_bytes, stage, seed):
    # staging buffers far smaller than the weight: many pieces, the last one partial
    from minigrok.engine.stream import Streamer

    rng = np.random.default_rng(seed)
    host = quant.QuantizedWeight8bit(rng.integers(-127, 128, (n_bytes, 1), dtype=np.int8),
                                     rng.integers(0, 2**16, (1, 1), dtype=np.uint16))
    weight, scales = Streamer(stage_bytes=stage).copy(host, 0, cupy.cuda.get_current_stream())
    assert np.array_equal(weight.get(), host.weight)
    assert np.array_equal(scales.get(), host.scales)


def test_layers_split_over_two_gpus(tiny_dir):
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: the split over several cannot be tried here")
    cfg = preset("tiny")
    # the first GPU takes the embeddings and 5 layers, the second the other 7
    limit = cfg.vocab_size * cfg.emb_size * 4 + reserve_bytes(cfg, False) + 5.5 * layer_bytes(cfg)
    m = minigrok.load(tiny_dir, device="cuda:0,1", gpu_memory=limit / 2**30)
    attention = [layer["multi_head_attention"] for layer in m.params["layers"]]
    assert all(isinstance(a[n], Int8Weight) for a in attention for n in a)      # all resident
    assert [a["query"].weight.device.id for a in attention] == [0] * 5 + [1] * 7
    assert [layer["rms_norm"].device.id for layer in m.params["layers"]] == [0] * 5 + [1] * 7
    cpu = minigrok.load(tiny_dir).logits(TOKENS)
    assert np.abs(m.logits(TOKENS) - cpu).max() / np.abs(cpu).max() < 1e-4
    # decoding: each layer's KV cache and kernels on its own GPU
    kwargs = dict(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert list(m.generate_ids([5, 17, 300], **kwargs)) == \
        list(minigrok.load(tiny_dir).generate_ids([5, 17, 300], **kwargs))
    assert m.params["layers"][7]["moe"]["linear"].weight.device.id == 1


def test_bench_on_the_gpu_reports_the_kernel(tiny_dir):
    import functools
    from unittest import mock

    from minigrok import bench as bench_module

    # Two timings of each product are enough to check the figures are there (the simulated
    # CuPy runs a 201 MB product in numpy: 20 took ~20 s).
    timed = functools.partial(bench_module.int8_kernel_bandwidth, repeats=2)
    with mock.patch.object(bench_module, "int8_kernel_bandwidth", timed):
        r = bench_module.bench(tiny_dir, prompt_len=4, new_tokens=4, device="cuda")
    assert r["resident_layers"] == 12 and r["streamed_layers"] == 0
    assert r["graph_layers"] == 12            # every layer's steps replayed as a CUDA graph
    assert r["int8_gemv_gb_s"] > 0 and r["dequant_matmul_gb_s"] > 0
    # the yardstick on a GPU: a read of 1 GiB of device memory, and every efficiency over it
    assert r["read_gb_s"] > 0 and r["token_efficiency"] > 0
    assert r["kernel_efficiency"] == pytest.approx(r["int8_gemv_gb_s"] / r["read_gb_s"], rel=3e-3)


def test_too_little_gpu_memory_is_a_clear_error(tiny_dir):
    from minigrok.errors import MinigrokError

    with pytest.raises(MinigrokError, match="not enough GPU memory: the first GPU"):
        minigrok.load(tiny_dir, device="cuda", gpu_memory=0.01)
