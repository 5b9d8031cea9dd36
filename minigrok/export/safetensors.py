"""The safetensors file format, written a tensor (a slice of a tensor) at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each name
to its dtype, shape and [begin, end) byte offsets in the data that follows, padded with
spaces to 8 bytes, then the tensors' bytes back to back. The ``safetensors`` library writes
it from tensors held in memory (``save_file`` takes the whole shard at once); an export of
Grok-1 is 630 GB in bfloat16, so minigrok writes the same bytes itself, streaming each
tensor from a callback, and the tests read its files back with the library.
"""

import json
import struct

import numpy as np

from ..errors import MinigrokError
from ..reference.quant import f32_to_bf16

# dtype name -> (safetensors' name, bytes per element)
DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


def encode(x, dtype: str) -> bytes:
    """float32 values ``x`` rounded once to ``dtype`` (to nearest, ties to even), as bytes.

    bfloat16 as the top half of the float32 rounded (quant.f32_to_bf16); float16 by numpy's
    cast, which must not overflow: Grok-1's weights all fit, a value that does not is an error.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.tobytes()
    if dtype == "bfloat16":
        return f32_to_bf16(x).tobytes()
    y = x.astype(np.float16)
    if not np.isfinite(y).all() and np.isfinite(x).all():
        big = float(np.abs(x).max())
        raise MinigrokError(f"a weight of magnitude {big:.4g} does not fit float16 (at most "
                            "65504): export as bfloat16 or float32")
    return y.tobytes()


def header(tensors, metadata: dict | None = None) -> bytes:
    """The header of a file holding ``tensors`` [(name, shape, dtype), ...] in that order:
    length, JSON, padding."""
    entries, offset = {}, 0
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, shape, dtype in tensors:
        code, size = DTYPES[dtype]
        n = size * int(np.prod(shape, dtype=np.int64))
        entries[name] = {"dtype": code, "shape": [int(s) for s in shape],
                         "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)              # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def nbytes(shape, dtype: str) -> int:
    return DTYPES[dtype][1] * int(np.prod(shape, dtype=np.int64))


def write_file(f, tensors, metadata: dict | None = None, progress=None):
    """Write one safetensors file to the open binary file ``f``.

    tensors: [(name, shape, dtype, chunks)], where ``chunks()`` yields float32 arrays whose
    concatenated C-order values are the tensor's, in order (a few rows at a time keeps memory
    small). ``progress(nbytes)`` is called after each chunk.
    """
    f.write(header([(n, s, d) for n, s, d, _ in tensors], metadata))
    for name, shape, dtype, chunks in tensors:
        left = nbytes(shape, dtype)
        for chunk in chunks():
            data = encode(chunk, dtype)
            left -= len(data)
            f.write(data)
            if progress:
                progress(len(data))
        if left:                                          # a bug in a producer, never input
            raise RuntimeError(f"{name}: {left} bytes short of its shape {tuple(shape)}")
