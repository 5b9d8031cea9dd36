"""CuPy's compute type for float32 products, simulated (engine/gemv._tf32_matmuls sets it).

With COMPUTE_TYPE_TF32, cuBLAS may run float32 products on the tensor cores, which keep
only 10 of each input's 23 mantissa bits. The simulated products then drop those bits from
their float32 inputs too, so that the simulated run checks what minigrok relies on: its
TF32 products are exact because every input already fits in TF32 (gemv.tf32_parts). A
product that fed plain float32 would be off by ~1e-3 of its size here, as on a GPU. The
numbers follow CuPy's enum.

As in CuPy, only 2-D products honour the setting: CuPy sends those to cublasGemmEx with the
compute type, but a batched (3-D) matmul to cublasSgemmStridedBatched, which runs in plain
float32 whatever the setting (measured on an H200: 3-D products of TF32 parts ran at the
float32 rate).
"""

import numpy

(COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP16,
 COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64, COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32) = range(8)

_compute_type = {}


def get_compute_type(dtype):
    return _compute_type.get(numpy.dtype(dtype), COMPUTE_TYPE_DEFAULT)


def set_compute_type(dtype, compute_type):
    _compute_type[numpy.dtype(dtype)] = compute_type


def matmul_inputs(inputs):
    """A product's inputs as the tensor cores would read them under the current setting."""
    if get_compute_type(numpy.float32) != COMPUTE_TYPE_TF32 or \
            any(getattr(a, "ndim", 2) != 2 for a in inputs):
        return inputs
    return tuple((a.view(numpy.uint32) & numpy.uint32(0xFFFFE000)).view(numpy.float32)
                 if isinstance(a, numpy.ndarray) and a.dtype == numpy.float32 else a
                 for a in inputs)
