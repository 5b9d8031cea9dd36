"""The CUDA int8 GEMV kernel's own source, run on the CPU by tests/kernel/emulate_cuda.cpp.

One std::thread per CUDA thread and a barrier for __syncthreads: the kernel's indexing,
tiles, row lanes, scale blocks and shared-memory reduction are checked against
x @ dequantize(W) without a GPU, with fast.gemv_launch's own grid. Needs a C++20 compiler
(g++ 11 or later); where there is none the tests are reported as skipped.
"""

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok import fast, quant

from testutil import REPO

CXX = shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler to build the CUDA emulator")
    build = tmp_path_factory.mktemp("kernel")
    (build / "kernel.cu").write_text(fast._GEMV_SOURCE)
    exe = build / "emulate_cuda"
    r = subprocess.run([CXX, "-std=c++20", "-O1", "-pthread", "-I", str(build), "-o", str(exe),
                        str(REPO / "tests" / "kernel" / "emulate_cuda.cpp")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return exe


# Rows per scale block: 1 and 3 (one row per CUDA block), 12 and 40 (a few), 64, 256 and 320
# (several 32-row CUDA blocks per scale block: a launch this small gets the shortest ranges).
# Columns: a partial 512-column tile, one, several. Every CUDA thread is an OS thread here, so
# the sizes stay small.
@settings(max_examples=12, deadline=None)
@given(blocks=st.sampled_from([1, 8]), rows=st.sampled_from([1, 3, 12, 40, 64, 256, 320]),
       n_out=st.integers(1, 70).map(lambda k: 16 * k), seed=st.integers(0, 2**32 - 1))
def test_kernel_source_computes_x_times_dequantized_weight(emulator, tmp_path_factory, blocks,
                                                           rows, n_out, seed):
    rng = np.random.default_rng(seed)
    n_in = blocks * rows
    x = rng.standard_normal(n_in).astype(np.float32)
    w = rng.integers(-127, 128, (n_in, n_out), dtype=np.int8)
    scales = quant.f32_to_bf16(rng.uniform(-2, 2, (blocks, n_out)).astype(np.float32))
    grid, block, rows_per_block, rows_per_scale = fast.gemv_launch(n_in, n_out, blocks)
    io = tmp_path_factory.mktemp("io")
    (io / "in").write_bytes(x.tobytes() + w.tobytes() + scales.tobytes())
    r = subprocess.run([str(emulator), *map(str, (*grid, *block, n_in, n_out, rows_per_block,
                                                   rows_per_scale)), io / "in", io / "out"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = np.fromfile(io / "out", dtype=np.float32)
    got, arrived = out[:n_out].astype(np.float64), out[n_out:].view(np.uint32)
    assert arrived.shape == (grid[0],) and not arrived.any()      # ready for the next launch
    dense = (w.astype(np.float64).reshape(blocks, rows, n_out)
             * quant.bf16_to_f32(scales).astype(np.float64)[:, None, :]).reshape(n_in, n_out)
    ref = x.astype(np.float64) @ dense
    bound = np.abs(x).astype(np.float64) @ np.abs(dense)
    assert np.all(np.abs(got - ref) <= 1e-5 * bound + 1e-30)
