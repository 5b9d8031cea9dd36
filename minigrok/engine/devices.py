"""Device names and where an array lives: ``cpu`` is NumPy, ``cuda[:N,M,...]`` is CuPy.

CuPy is optional: it is imported only when a cuda device is asked for, and an array can only
be a CuPy array if something already imported CuPy to make it.
"""

import numpy

from ..errors import MinigrokError
from ..reference.xp import array_module


def parse_devices(device: str) -> list[int]:
    """``cuda`` -> [0], ``cuda:2`` -> [2], ``cuda:0,1,3`` -> [0, 1, 3]."""
    _, _, ids = device.partition(":")
    try:
        devices = [int(i) for i in ids.split(",")] if ids else [0]
    except ValueError:
        raise MinigrokError(f"unknown device {device!r}: use cpu, cuda, cuda:N or "
                            "cuda:N,M,...") from None
    if len(set(devices)) != len(devices) or min(devices) < 0:
        raise MinigrokError(f"device {device!r}: each GPU may be named once")
    return devices


def backend(device: str):
    """The array module for a device name: ``cpu`` -> numpy, ``cuda``, ``cuda:N`` or
    ``cuda:N,M,...`` (a model split over several GPUs) -> cupy."""
    if device == "cpu":
        return numpy
    if device == "cuda" or device.startswith("cuda:"):
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


def on_host(a) -> bool:
    """Whether ``a`` is in host memory (numpy, a memory map): a streamed layer's weight."""
    return array_module(a) is numpy


def plain(a) -> numpy.ndarray:
    """A host array as a GPU copy should see it: bfloat16 bits (uint16 tagged with dtype
    metadata, see formats/safepickle.BF16_BITS) as plain uint16. A view, nothing is copied."""
    a = numpy.asarray(a)
    return a.view(a.dtype.str) if a.dtype.metadata else a
