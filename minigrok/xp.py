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


def on_host(a) -> bool:
    """Whether ``a`` is in host memory (numpy, a memory map): a streamed layer's weight."""
    return array_module(a) is numpy


def to_numpy(x) -> numpy.ndarray:
    """``x`` as a host (NumPy) array, copying it off the GPU if it lives there."""
    xp = array_module(x)
    if xp is numpy:
        return numpy.asarray(x)
    return xp.asnumpy(x)


def plain(a) -> numpy.ndarray:
    """A host array as a GPU copy should see it: bfloat16 bits (uint16 tagged with dtype
    metadata, see safepickle.BF16_BITS) as plain uint16. A view, nothing is copied."""
    a = numpy.asarray(a)
    return a.view(a.dtype.str) if a.dtype.metadata else a


def backend(device: str):
    """The array module for a device name: ``cpu`` -> numpy, ``cuda``, ``cuda:N`` or
    ``cuda:N,M,...`` (a model split over several GPUs) -> cupy."""
    from .errors import MinigrokError

    if device == "cpu":
        return numpy
    if device == "cuda" or device.startswith("cuda:"):
        from .placement import parse_devices

        devices = parse_devices(device)
        try:
            import cupy
        except ImportError:
            raise MinigrokError(f"device {device!r} needs CuPy, which is not installed "
                                "(pip install cupy-cuda12x)") from None
        try:
            for index in reversed(devices):
                cupy.cuda.Device(index).use()      # fails for a GPU that is not there
        except Exception as e:                     # no driver, no such GPU
            raise MinigrokError(f"device {device!r} is not usable: {e}") from None
        return cupy
    raise MinigrokError(f"unknown device {device!r}: use cpu, cuda, cuda:N or cuda:N,M,...")


# A checkpoint's array payload starts wherever its pickle header ends, so a float32 array read
# in place is often not 4-byte aligned, and numpy computes on unaligned arrays far slower
# (no BLAS). Arrays up to this size are copied into aligned memory when a model is loaded;
# larger ones (the real embedding matrix, 3.2 GB) stay memory-mapped and are streamed.
ALIGN_COPY_BYTES = 256 << 20


def align_small(tree):
    """A host parameter tree (dicts, lists, NamedTuples) ready for numpy: memory-mapped weights
    stay memory-mapped, except small unaligned ones, which are copied. (GPUs: placement.place.)
    """
    if isinstance(tree, dict):
        return {k: align_small(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [align_small(v) for v in tree]
    if isinstance(tree, tuple):
        return type(tree)(*(align_small(v) for v in tree))
    if not tree.flags.aligned and tree.nbytes <= ALIGN_COPY_BYTES:
        return numpy.array(tree)
    return tree
