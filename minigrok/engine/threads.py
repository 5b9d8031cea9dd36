"""Threads for the CPU fast paths: one shared pool, ranges cut between threads, BLAS held back.

numpy releases the GIL inside its int8 -> float32 copy and inside BLAS, and ctypes inside
the compiled kernel, so the fast paths split a product's columns (or scale blocks) between
threads of one pool. OpenBLAS would start its own threads inside each small product and
fight ours for the same cores (measured on 2 cores: 1.3-4.5 GB/s erratic instead of
6.5 GB/s steady), so it is held to one thread meanwhile (``blas_threads``).
"""

import contextlib
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

from ..environment import num_threads

# Weights at least this large (elements) are split between threads.
PARALLEL_ELEMENTS = 1 << 22

_pool = None
_pool_lock = threading.Lock()


def parallel_map(fn, jobs):
    """[fn(*job) for job in jobs], run by the calling thread and the shared pool together,
    each taking the next job as it finishes one.

    The caller works instead of waiting: waking a pool thread costs ~0.1-0.2 ms on this VM (a
    bare two-job call took 230-280 us with both jobs on the pool, 37-39 us with the caller
    taking jobs too), and a decode step makes a dozen such calls per layer. (Cutting the
    work into more jobs than threads, so that the pool's thread, which ran ~5% slower here,
    would take fewer, measured no faster: the products' jobs stay one per thread.)
    """
    global _pool
    jobs = list(jobs)
    if len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(num_threads(), thread_name_prefix="minigrok")
    results = [None] * len(jobs)
    taken = iter(range(len(jobs)))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                return
            results[i] = fn(*jobs[i])

    helpers = [_pool.submit(work) for _ in range(min(num_threads(), len(jobs)) - 1)]
    try:
        work()
    finally:
        for helper in helpers:                 # (waited for even when the caller's job raised)
            helper.result()
    return results


def split_range(n: int, parts: int, step: int) -> list:
    """[(r0, r1), ...]: range(n) cut into at most ``parts`` pieces on multiples of ``step``."""
    per = -(-n // parts)
    per = -(-per // step) * step
    return [(r0, min(r0 + per, n)) for r0 in range(0, n, per)]



def openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS that numpy loaded, or None.

    Found by name among the libraries mapped into this process (/proc/self/maps); numpy's
    own wheels carry a renamed OpenBLAS (scipy_openblas64_), distributions the plain one.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    names = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
             ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
             ("openblas_set_num_threads", "openblas_get_num_threads")]
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in names:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                return getattr(lib, set_name), getattr(lib, get_name)
    return None

_blas = None
_blas_users = [0, None]               # blocks inside blas_threads now, the count to restore
_blas_lock = threading.Lock()


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with BLAS limited to ``n`` threads (a no-op where it cannot be set).

    Safe from several threads: the first to enter saves BLAS's count, the last to leave
    puts it back.
    """
    global _blas
    with _blas_lock:
        if _blas is None:
            _blas = openblas() or False
        if _blas:
            if _blas_users[0] == 0:
                _blas_users[1] = _blas[1]()
            _blas_users[0] += 1
            _blas[0](n)
    try:
        yield
    finally:
        with _blas_lock:
            if _blas:
                _blas_users[0] -= 1
                if _blas_users[0] == 0:
                    _blas[0](_blas_users[1])
