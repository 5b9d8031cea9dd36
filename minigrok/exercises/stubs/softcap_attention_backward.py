"""Exercise softcap_attention_backward: the backward pass of Grok-1's attention (lesson 16).

Check your work:  python -m minigrok exercises check softcap_attention_backward
"""

import numpy as np  # noqa: F401  (you will want it)


def attention_backward(q, k, v, keep, offset, multiplier, grad):
    """The gradients of a loss L through out = attention(q, k, v), given dL/dout.

    q:          [T, K, G, d]  T rotated queries at positions offset..offset+T-1; query head
                              g of group k reads kv head k (lesson 07's GQA)
    k, v:       [S, K, d]     keys and values at positions 0..S-1
    keep:       [S] bool      False for a padding key
    offset:     int           the position of the first query
    multiplier: float         scores are (q . k) * multiplier
    grad:       [T, K, G, d]  dL/dout
    returns (dq [T, K, G, d], dk [S, K, d], dv [S, K, d])

    The forward (lesson 07): s = 30 * tanh((q . k) * multiplier / 30); s = -1e30 where the
    key is later than the query or padding; p = softmax(s) over the keys; out = p @ v. Go back
    through each step in turn. The checker compares your gradients with central finite
    differences of minigrok's forward, in float64: compute in the inputs' precision.
    """
    raise NotImplementedError
