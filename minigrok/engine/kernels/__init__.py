"""minigrok's compiled kernels, each in its own source file beside this one.

int8_matmul.c (the CPU's int8 product), unembed.c (the CPU's logits over the float32
embedding) and read_memory.c (bench's raw read yardstick), all three built by
engine/native.py; gemv.cu (the GPU's int8 GEMV, engine/gemv.py) and decode.cu (one token
through a layer on the GPU, engine/decode.py). They
ship as package data and are compiled at run time; the tests compile the same files for a
CPU emulation of the CUDA ones (tests/kernel/).
"""

from pathlib import Path

FOLDER = Path(__file__).parent


def source(name: str) -> str:
    """The text of kernel source ``name`` (e.g. ``"gemv.cu"``)."""
    return (FOLDER / name).read_text()
