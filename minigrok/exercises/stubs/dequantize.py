"""Exercise dequantize: int8 weights times block scales (lesson 03).

Check your work:  python -m minigrok exercises check dequantize
"""

import numpy as np  # noqa: F401  (you will want it)


def dequantize(weight, scales):
    """Turn a quantised weight back into float32.

    weight: int8 [n_in, n_out]
    scales: float32 [B, n_out], B divides n_in. The n_in rows are cut into B equal
            contiguous blocks of R = n_in // B rows; every row of block b is multiplied,
            column by column, by scales[b]. (B = 1: one scale per output column. B = 8 in
            Grok-1's attention output and expert down-projection.)
    returns float32 [n_in, n_out]:  W[r, j] = weight[r, j] * scales[r // R, j]
    """
    raise NotImplementedError
