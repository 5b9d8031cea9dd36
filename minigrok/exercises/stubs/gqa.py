"""Exercise gqa: grouped-query attention, which kv head each query head reads (lesson 07).

Check your work:  python -m minigrok exercises check gqa
"""

import numpy as np  # noqa: F401  (you will want it)


def expand_kv(k, num_q_heads):
    """Give every query head its own copy of the key (or value) head it reads.

    k:           float32 [S, K, d]  S positions, K kv heads, head width d
    num_q_heads: int H, a multiple of K; G = H // K query heads share one kv head
    returns float32 [S, H, d]: out[:, h] is the kv head that query head h reads

    Grok-1 (48 query heads, 8 kv heads) reshapes its queries to [T, K, G, d]. Work out from
    that reshape which kv head query head h belongs to.
    """
    raise NotImplementedError
