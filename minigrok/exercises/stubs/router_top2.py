"""Exercise router_top2: the mixture-of-experts router (lesson 08).

Check your work:  python -m minigrok exercises check router_top2
"""

import numpy as np  # noqa: F401  (you will want it)


def route(x, router, k=2):
    """Choose k experts for every token, and how much each one counts.

    x:      float32 [T, D]  tokens (after rms_norm_2)
    router: float32 [D, E]  the router weights, E experts (8 in Grok-1)
    k:      int             experts per token (2 in Grok-1)
    returns (probs, expert_ids, gates):
        probs:      float32 [T, E]  softmax of x @ router over all E experts
        expert_ids: int [T, k]      the k most probable experts, most probable first;
                                    on an exact tie the lower expert index comes first
        gates:      float32 [T, k]  probs at expert_ids, exactly as they are
    """
    raise NotImplementedError
