"""Exercise kv_cache: one step of the key/value cache (lesson 12).

Check your work:  python -m minigrok exercises check kv_cache
"""

import numpy as np  # noqa: F401  (you will want it)


def kv_cache_step(cache_k, cache_v, length, k_new, v_new):
    """Store this step's keys and values, and return what attention must look at.

    cache_k, cache_v: float32 [S_max, K, d]  the cache of one layer; write into it in place
    length:           int                    positions already stored (0 on the first step)
    k_new, v_new:     float32 [T, K, d]      keys/values of this step's T tokens, which sit
                                             at positions length .. length+T-1
    returns (keys, values): float32 [length+T, K, d] each: every key and value from
                            position 0 up to and including this step's tokens

    The check feeds a sequence in several steps (a prompt, then one token at a time) and
    compares attention through your cache with attention over the whole sequence at once.
    """
    raise NotImplementedError
