"""The CPU fast paths compute what the teaching code computes (see minigrok/fast.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok import fast
from minigrok.errors import MinigrokError


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), parts=st.integers(1, 5), step=st.integers(1, 64))
def test_split_covers_the_range_on_step_boundaries(n, parts, step):
    pieces = fast._split(n, parts, step)
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
    saved = fast.CHUNK_ELEMENTS
    fast.CHUNK_ELEMENTS = max(1, chunk * D)      # several chunks per thread
    try:
        out = fast.matmul_transposed(h, m, threads=threads)
    finally:
        fast.CHUNK_ELEMENTS = saved
    ref = h.astype(np.float64) @ m.astype(np.float64).T
    bound = np.abs(h).astype(np.float64) @ np.abs(m).astype(np.float64).T
    assert out.shape == (T, V) and out.dtype == np.float32
    assert np.all(np.abs(out - ref) <= 1e-5 * bound + 1e-30)


def test_blas_threads_finds_numpys_openblas_and_restores_it():
    blas_name = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    blas = fast._openblas()
    assert (blas is not None) == ("openblas" in blas_name.lower()), blas_name
    if blas is None:                        # another BLAS: the context manager is a no-op
        with fast.blas_threads(1):
            pass
        pytest.skip(f"numpy's BLAS is {blas_name}, not OpenBLAS")
    set_threads, get_threads = blas
    before = get_threads()
    with fast.blas_threads(1):
        assert get_threads() == 1
    assert get_threads() == before


def test_blas_threads_nested_and_from_threads_restores_once():
    blas = fast._openblas()
    if blas is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    _, get_threads = blas
    before = get_threads()
    with fast.blas_threads(1):
        with fast.blas_threads(1):
            assert get_threads() == 1
        assert get_threads() == 1            # the outer block still holds it
    assert get_threads() == before
    from concurrent.futures import ThreadPoolExecutor

    def hold(_):
        with fast.blas_threads(1):
            return get_threads()
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(hold, range(40))) == {1}
    assert get_threads() == before


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINIGROK_THREADS", "3")
    assert fast.num_threads() == 3
    for bad in ("abc", "0", "-2", "1.5"):
        monkeypatch.setenv("MINIGROK_THREADS", bad)
        with pytest.raises(MinigrokError, match="MINIGROK_THREADS"):
            fast.num_threads()
