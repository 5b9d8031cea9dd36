"""Exercise int8_matmul: multiply by an int8 weight without widening it all (lesson 15).

Check your work:  python -m minigrok exercises check int8_matmul
"""

import numpy as np  # noqa: F401  (you will want it)


def int8_matmul(x, weight, scales):
    """x @ dequantize(weight, scales), without ever holding the whole float32 weight.

    x:       float32 [T, n_in]
    weight:  int8 [n_in, n_out]
    scales:  float32 [B, n_out], B divides n_in: the rows are cut into B contiguous blocks
             of R = n_in // B rows, block b scaled column by column by scales[b] (as in the
             exercise dequantize)
    returns  float32 [T, n_out]

    Why: as float32 a weight takes 4x its int8 bytes (a full-width Grok-1 layer: 1.3 GB of
    int8, 5.2 GB widened). Widen a few rows at a time and add up their products; a block's
    scales can wait until its rows are summed, x_b @ (q_b * s_b) = (x_b @ q_b) * s_b.
    The check measures your peak memory on a 1536 x 512 weight: it must stay under half of
    the float32 weight (1.5 MB). Careful: x @ weight on an int8 weight widens all of it.
    """
    raise NotImplementedError
