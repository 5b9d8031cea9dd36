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
