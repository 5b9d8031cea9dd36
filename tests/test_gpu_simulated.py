"""tests/test_cupy.py against a simulated CuPy with two GPUs (tests/simcupy), where none is here.

The simulation checks minigrok's GPU glue: the memory plan applied, layers streamed from the
host by engine/stream.py's Streamer, activations moved between two GPUs, the KV cache made
on each layer's GPU, the kernel launched with a consistent grid, the decode plans' CUDA
graphs (a capture records launches and refuses anything else) replayed with nothing
allocated; any array on the wrong device raises there as it would on a GPU. It proves nothing about CuPy, CUDA or speed: the real
run is `bash tests/gpu_check.sh` on a GPU machine.
"""

import os
import subprocess
import sys

import pytest

from testutil import REPO


def test_gpu_tests_pass_on_simulated_cupy(tmp_path):
    try:
        import cupy  # noqa: F401
        pytest.skip("the real CuPy is installed: tests/test_cupy.py runs on it")
    except ImportError:
        pass
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests" / "simcupy"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "t"), str(REPO / "tests" / "test_cupy.py")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "13 passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
