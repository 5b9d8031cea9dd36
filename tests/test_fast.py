"""The CPU fast paths compute what the reference computes (minigrok/engine/cpu.py, native.py,
threads.py; the GPU's TF32 split, gemv.tf32_parts, whose arithmetic is checked here too)."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.engine import cpu, gemv, native
from minigrok.engine import threads as engine_threads
from minigrok.environment import num_threads
from minigrok.errors import MinigrokError


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), parts=st.integers(1, 5), step=st.integers(1, 64))
def test_split_covers_the_range_on_step_boundaries(n, parts, step):
    pieces = engine_threads.split_range(n, parts, step)
    assert len(pieces) <= parts
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))   # contiguous, no overlap
    assert all(r0 % step == 0 and r0 < r1 for r0, r1 in pieces)


def unaligned(a):
    """A copy of float32 ``a`` whose data starts one byte past an aligned address."""
    raw = np.empty(a.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(np.float32).reshape(a.shape) if a.size else a.copy()
    out[...] = a
    return out


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 4), V=st.integers(1, 300), D=st.integers(1, 40),
       threads=st.integers(1, 3), chunk=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_matmul_transposed_equals_h_times_matrix_transposed(T, V, D, threads, chunk, seed):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((T, D)).astype(np.float32)
    m = unaligned(rng.standard_normal((V, D)).astype(np.float32))
    assert not m.flags.aligned or D * V == 0
    # chunk rows at a time: several chunks per thread (0: the default, one chunk here)
    out = cpu.matmul_transposed(h, m, threads=threads, chunk_rows=chunk or None)
    ref = h.astype(np.float64) @ m.astype(np.float64).T
    bound = np.abs(h).astype(np.float64) @ np.abs(m).astype(np.float64).T
    assert out.shape == (T, V) and out.dtype == np.float32
    assert np.all(np.abs(out - ref) <= 1e-5 * bound + 1e-30)


def test_blas_threads_finds_numpys_openblas_and_restores_it():
    blas_name = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    blas = engine_threads.openblas()
    assert (blas is not None) == ("openblas" in blas_name.lower()), blas_name
    if blas is None:                        # another BLAS: the context manager is a no-op
        with engine_threads.blas_threads(1):
            pass
        pytest.skip(f"numpy's BLAS is {blas_name}, not OpenBLAS")
    set_threads, get_threads = blas
    before = get_threads()
    with engine_threads.blas_threads(1):
        assert get_threads() == 1
    assert get_threads() == before


def test_blas_threads_nested_and_from_threads_restores_once():
    blas = engine_threads.openblas()
    if blas is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    _, get_threads = blas
    before = get_threads()
    with engine_threads.blas_threads(1):
        with engine_threads.blas_threads(1):
            assert get_threads() == 1
        assert get_threads() == 1            # the outer block still holds it
    assert get_threads() == before
    from concurrent.futures import ThreadPoolExecutor

    def hold(_):
        with engine_threads.blas_threads(1):
            return get_threads()
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(hold, range(40))) == {1}
    assert get_threads() == before


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINIGROK_THREADS", "3")
    assert num_threads() == 3
    for bad in ("abc", "0", "-2", "1.5"):
        monkeypatch.setenv("MINIGROK_THREADS", bad)
        with pytest.raises(MinigrokError, match="MINIGROK_THREADS"):
            num_threads()


# -- the compiled int8 GEMV ------------------------------------------------------------------

def kernels(name="int8_matmul"):
    """(variant, kernel) for every build of kernels/<name>.c (native.VARIANTS: this CPU's
    best, AVX2 without AVX-512, plain C); skips where nothing compiles."""
    built = [(variant, native.native_kernel(name, variant)) for variant in native.VARIANTS]
    if any(kernel is None for _, kernel in built):
        pytest.skip("no working C compiler ($CC or cc): the numpy path runs instead")
    return built


def int8_problem(rng, n_in, n_out, blocks, T=1):
    w = rng.integers(-128, 128, (n_in, n_out), dtype=np.int8)
    s = rng.uniform(1e-3, 2.0, (blocks, n_out)).astype(np.float32)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    dense = (w.reshape(blocks, n_in // blocks, n_out) * s[:, None].astype(np.float64))
    dense = dense.reshape(n_in, n_out)
    return x, w, s, x.astype(np.float64) @ dense, np.abs(x).astype(np.float64) @ np.abs(dense)


@settings(max_examples=60, deadline=None)
@given(blocks=st.sampled_from([1, 2, 8]), per_block=st.integers(1, 13),
       n_out=st.integers(1, 300), T=st.integers(1, 2 * native.NATIVE_TOKENS + 1),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_native_matmul_equals_x_times_dequantized_weight(blocks, per_block, n_out, T, threads,
                                                         seed):
    # per_block 1..13 leaves 0-3 rows after the groups of 4; n_out 1..300 leaves 0-7 columns
    # after the 8-wide vectors and splits unevenly between threads; T runs past one call's
    # NATIVE_TOKENS
    x, w, s, ref, bound = int8_problem(np.random.default_rng(seed), blocks * per_block, n_out,
                                       blocks, T)
    for name, kernel in kernels():
        out = native.native_matmul(x, w, s, kernel, threads=threads)
        assert out.shape == (T, n_out) and out.dtype == np.float32, name
        assert np.all(np.abs(out - ref) <= 1e-5 * bound + 1e-30), name
        # a thread owns whole scale blocks or columns, and a token's sums do not involve the
        # other tokens: neither the number of threads nor the batch changes a single bit
        np.testing.assert_array_equal(out, native.native_matmul(x, w, s, kernel, threads=1))
        np.testing.assert_array_equal(out[-1:], native.native_matmul(x[-1:], w, s, kernel))


@settings(max_examples=15, deadline=None)
@given(shapes=st.lists(st.tuples(st.sampled_from([1, 2, 8]), st.integers(1, 9),
                                 st.integers(1, 2200), st.integers(1, native.NATIVE_TOKENS)),
                       min_size=1, max_size=4),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_native_matmuls_make_each_product_as_native_matmul_does(shapes, threads, seed):
    # several products in one parallel_map (a decode step's q|k|v, the experts' up|gate): each
    # the same bits as alone, whatever the threads; widths past 1024 are cut into pieces
    rng = np.random.default_rng(seed)
    problems = [int8_problem(rng, blocks * per_block, n_out, blocks, T)[:3]
                for blocks, per_block, n_out, T in shapes]
    for name, kernel in kernels():
        together = native.native_matmuls(problems, kernel, threads=threads)
        assert len(together) == len(problems)
        for (x, w, s), y in zip(problems, together):
            np.testing.assert_array_equal(y, native.native_matmul(x, w, s, kernel, threads=1))


def test_native_matmul_across_column_tiles_and_scale_blocks():
    # wider than a tile (16352 columns for one token, 2016 for eight), split into columns (one
    # scale block) or into blocks (8 of 5 rows) and columns (3 blocks, 4 threads)
    for T in (1, native.NATIVE_TOKENS):
        for blocks, per_block in ((1, 40), (8, 5), (3, 7)):
            x, w, s, ref, bound = int8_problem(np.random.default_rng(7), blocks * per_block,
                                               16384 + 37, blocks, T)
            for name, kernel in kernels():
                one = native.native_matmul(x, w, s, kernel, threads=1)
                assert np.all(np.abs(one - ref) <= 1e-5 * bound + 1e-30), (name, T, blocks)
                for threads in (2, 3, 4):
                    np.testing.assert_array_equal(
                        native.native_matmul(x, w, s, kernel, threads=threads), one)


def test_native_matmul_takes_a_few_tokens_and_minigrok_native_0_turns_it_off(monkeypatch):
    kernels()
    x, w, s, ref, bound = int8_problem(np.random.default_rng(3), 64, 4096, 8,
                                       native.NATIVE_TOKENS + 1)
    calls = []
    real = native.native_matmul
    monkeypatch.setattr(cpu, "native_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    for T in (1, native.NATIVE_TOKENS):
        out = cpu.int8_matmul(x[:T], w, s)
        assert np.all(np.abs(out - ref[:T]) <= 1e-5 * bound[:T])
    assert calls == [1, 1]
    cpu.int8_matmul(x, w, s)                                 # more tokens: numpy's tiles
    cpu.int8_matmul(x[:1], w, s, chunk_rows=8)               # a chunk size asks for numpy
    cpu.int8_matmul(x[:1], np.asfortranarray(w), s)          # not row-major: numpy
    assert calls == [1, 1]
    monkeypatch.setenv("MINIGROK_NATIVE", "0")
    assert native.native_kernel() is None
    out = cpu.int8_matmul(x[:1], w, s)
    assert calls == [1, 1] and np.all(np.abs(out - ref[:1]) <= 1e-5 * bound[:1])


def test_native_kernel_is_built_once_into_the_cache_and_falls_back_without_a_compiler(
        monkeypatch, tmp_path):
    kernels()
    cc = tmp_path / "cc"                                       # the compiler, then a broken one
    cc.write_text(f"#!/bin/sh\nexec {os.environ.get('CC') or 'cc'} \"$@\"\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("MINIGROK_CACHE", str(tmp_path))
    assert native.build_kernel() is not None
    built = sorted((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"          # no temporary left behind
    # A new process loads the cached library: no compiler needed.
    cc.write_text("#!/bin/sh\nexit 1\n")
    assert native.build_kernel() is not None
    # With no library cached and no compiler, there is no kernel: int8_matmul then takes
    # numpy's tiles (test_native_matmul_takes_a_few_tokens_and_minigrok_native_0_turns_it_off).
    monkeypatch.setenv("MINIGROK_CACHE", str(tmp_path / "empty"))
    assert native.build_kernel() is None


def test_native_matmul_refuses_a_weight_it_would_have_to_copy():
    kernel = kernels()[0][1]
    w = np.zeros((8, 16), dtype=np.int8)
    with pytest.raises(ValueError, match="C-contiguous int8"):
        native.native_matmul(np.ones((1, 8), np.float32), w.T.copy().T, np.ones((1, 16)), kernel)


# -- the compiled logits over the embedding, and the read yardstick -----------------------------

@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, native.NATIVE_TOKENS), V=st.integers(1, 70), D=st.integers(1, 80),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_native_unembed_equals_h_times_matrix_transposed(T, V, D, threads, seed):
    # V 1..70 leaves 0-3 rows after the groups of 4 and splits unevenly between threads; D
    # 1..80 leaves 0-15 values after the 16-wide steps. The matrix is unaligned, as a
    # checkpoint's float32 payload usually is, and is read where it lies.
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((T, D)).astype(np.float32)
    m = unaligned(rng.standard_normal((V, D)).astype(np.float32))
    ref = h.astype(np.float64) @ m.astype(np.float64).T
    bound = np.abs(h).astype(np.float64) @ np.abs(m).astype(np.float64).T
    for variant, kernel in kernels("unembed"):
        out = native.native_unembed(h, m, kernel, threads=threads)
        assert out.shape == (T, V) and out.dtype == np.float32, variant
        # float32 sums of at most 80 products: within 80 roundings of 2^-24 of the bound
        assert np.all(np.abs(out - ref) <= 1e-5 * bound + 1e-30), variant
        # each row's sums are its own: neither threads nor the other tokens change a bit
        np.testing.assert_array_equal(out, native.native_unembed(h, m, kernel, threads=1))
        np.testing.assert_array_equal(out[-1:], native.native_unembed(h[-1:], m, kernel))


def test_matmul_transposed_sends_a_few_tokens_to_the_compiled_kernel(monkeypatch):
    kernels("unembed")
    rng = np.random.default_rng(4)
    h = rng.standard_normal((native.NATIVE_TOKENS + 1, 64)).astype(np.float32)
    m = unaligned(rng.standard_normal((300, 64)).astype(np.float32))
    ref = h.astype(np.float64) @ m.astype(np.float64).T
    calls = []
    real = native.native_unembed
    monkeypatch.setattr(cpu, "native_unembed", lambda *a, **k: calls.append(1) or real(*a, **k))
    for T in (1, native.NATIVE_TOKENS):
        np.testing.assert_allclose(cpu.matmul_transposed(h[:T], m), ref[:T], rtol=1e-4, atol=1e-4)
    assert calls == [1, 1]
    cpu.matmul_transposed(h, m)                               # more tokens: BLAS on copies
    cpu.matmul_transposed(h[:1], m, chunk_rows=7)             # a chunk size asks for the copies
    assert calls == [1, 1]
    monkeypatch.setenv("MINIGROK_NATIVE", "0")
    np.testing.assert_allclose(cpu.matmul_transposed(h[:1], m), ref[:1], rtol=1e-4, atol=1e-4)
    assert calls == [1, 1]


def test_native_unembed_refuses_a_matrix_it_would_have_to_copy():
    kernel = kernels("unembed")[0][1]
    m = np.zeros((16, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        native.native_unembed(np.ones((1, 8), np.float32), m.T.copy().T, kernel)


@settings(max_examples=30, deadline=None)
@given(words=st.integers(0, 200), offset=st.integers(0, 7), seed=st.integers(0, 2**32 - 1))
def test_read_memory_reads_every_word(words, offset, seed):
    # The XOR of all the 8-byte words: wrong if any word is skipped or read twice (the 128-byte
    # steps, the tail, a start off any alignment).
    raw = np.random.default_rng(seed).integers(0, 256, 8 * words + 8, dtype=np.uint8)
    buf = raw[offset:offset + 8 * words]
    expected = int(np.bitwise_xor.reduce(buf.view(np.uint64))) if words else 0
    for variant, kernel in kernels("read_memory"):
        assert kernel(buf.ctypes.data, buf.nbytes) == expected, variant


# -- the GPU's TF32 split, checked with numpy ---------------------------------------------------

# Finite values from 2^-100 (their last part is still a normal float32) to 2^120 (times 127
# still finite), zeros, and infinities.
float32_values = st.one_of(
    st.floats(2.0**-100, 2.0**120, width=32), st.floats(-2.0**120, -2.0**-100, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -3.0e38 / 2**9, np.inf, -np.inf]))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(float32_values, min_size=1, max_size=30))
def test_tf32_parts_are_exact_and_add_up_to_x(values):
    x = np.array(values, np.float32)[None]
    hi, mid, lo = gemv.tf32_parts(x)
    for part in (hi, mid, lo):                    # TF32: the low 13 mantissa bits are zero
        assert not np.any(part.view(np.uint32) & 0x1FFF)
    finite = np.isfinite(x)
    # the parts add up to x exactly (in float64, and in float32 from the small end)
    np.testing.assert_array_equal((hi.astype(np.float64) + mid + lo)[finite], x[finite])
    np.testing.assert_array_equal(((lo + mid) + hi)[finite], x[finite])
    # an int8 times each part is exact in float32: the tensor cores' products lose nothing
    for part in (hi, mid, lo):
        np.testing.assert_array_equal((part[finite] * np.float32(-127)).astype(np.float64),
                                      part[finite].astype(np.float64) * -127)
    nonfinite = ~finite                           # inf and nan stay whole in hi
    np.testing.assert_array_equal(hi[nonfinite], x[nonfinite])
    assert not np.any(mid[nonfinite]) and not np.any(lo[nonfinite])


def test_tf32_parts_keep_nan():
    hi, mid, lo = gemv.tf32_parts(np.array([[np.nan, 1.5]], np.float32))
    assert np.isnan(hi[0, 0]) and mid[0, 0] == 0 and lo[0, 0] == 0 and hi[0, 1] == 1.5


def test_a_kernel_cache_others_can_write_is_not_loaded(monkeypatch, tmp_path):
    # Whoever can write the cache can run code in minigrok: such a library is left alone.
    kernels()
    monkeypatch.setenv("MINIGROK_CACHE", str(tmp_path))
    assert native.build_kernel() is not None                     # built, and ours
    (tmp_path / "native").chmod(0o777)
    with pytest.warns(UserWarning, match="writable by others or not yours"):
        assert native.build_kernel() is None
    (tmp_path / "native").chmod(0o700)
    library = next((tmp_path / "native").glob("*.so"))
    library.chmod(0o666)
    with pytest.warns(UserWarning, match=str(library)):
        assert native.build_kernel() is None
