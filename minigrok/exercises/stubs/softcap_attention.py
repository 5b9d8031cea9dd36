"""Exercise softcap_attention: soft-capped scores, masks and softmax (lesson 07).

Check your work:  python -m minigrok exercises check softcap_attention
"""

import numpy as np  # noqa: F401  (you will want it)


def attention_weights(q, k, keep, offset, multiplier):
    """Attention probabilities of T queries over S keys, grouped-query layout.

    q:          float32 [T, K, G, d]  queries (already rotated) at positions offset .. offset+T-1;
                                      K kv heads, G query heads per kv head, head width d
    k:          float32 [S, K, d]     keys (already rotated) at positions 0 .. S-1
    keep:       bool [S]              False where the key's token is padding
    offset:     int                   position of the first query (tokens already in the cache)
    multiplier: float                 attn_output_multiplier (1/sqrt(d) in Grok-1)
    returns float32 [K, G, T, S]:     for each kv head, group slot and query, a distribution
                                      over the S keys

    Steps, as the official code does them:
      1. score[k, g, t, s] = (q[t, k, g] . k[s, k]) * multiplier
      2. soft-cap:  score = 30 * tanh(score / 30)
      3. query t may see key s only if s <= offset + t (causal) and keep[s];
         every other score becomes -1e30 (a large finite number, not -inf)
      4. softmax over s, in float32
    """
    raise NotImplementedError
