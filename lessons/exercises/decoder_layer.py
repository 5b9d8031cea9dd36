"""Exercise decoder_layer: one Grok-1 decoder layer from its parts (lesson 10).

Check your work:  python -m minigrok exercises check decoder_layer
"""

import numpy as np  # noqa: F401  (you will want it)


def decoder_layer(h, scales, rms_norm, attention, moe):
    """One decoder layer: an attention block, then a mixture-of-experts block.

    h:         float32 [T, D]  the residual stream coming in
    scales:    float32 [4, D]  the layer's four RMSNorm scales, by their official names:
                               scales[0] rms_norm, scales[1] rms_norm_1,
                               scales[2] rms_norm_2, scales[3] rms_norm_3
    rms_norm:  rms_norm(x, scale) -> float32 [T, D]  (the exercise rmsnorm's function)
    attention: attention(x) -> float32 [T, D]  the layer's attention (Grok-1's own, its
               weights inside), x [T, D]
    moe:       moe(x) -> float32 [T, D]  the layer's mixture of experts, x [T, D]
    returns float32 [T, D]: the residual stream going out

    Each block reads a normalised copy of the stream and adds its result back. Grok-1 wraps
    each block in two of the four norms, numbered in the order the layer uses them. (Which
    goes where, and is there one after each block too? Lesson 10.)
    """
    raise NotImplementedError
