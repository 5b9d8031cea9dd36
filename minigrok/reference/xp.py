"""NumPy on the CPU, CuPy on a GPU: pick whichever module an array belongs to.

Every function in minigrok takes its array module from its input, so the same code
runs on both. CuPy is optional: it is never imported here, because an array can only
be a CuPy array if the caller already imported CuPy to make it.
"""

import sys

import numpy


def array_module(x):
    """``cupy`` if ``x`` is a CuPy array, else ``numpy``."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.get_array_module(x)
    return numpy


def to_numpy(x) -> numpy.ndarray:
    """``x`` as a host (NumPy) array, copying it off the GPU if it lives there."""
    xp = array_module(x)
    if xp is numpy:
        return numpy.asarray(x)
    return xp.asnumpy(x)
