"""Exercise nucleus: the official nucleus (top-p) filter (lesson 12).

Check your work:  python -m minigrok exercises check nucleus
"""

import numpy as np  # noqa: F401  (you will want it)


def top_p_filter(logits, top_p):
    """Keep the nucleus of the distribution; push every other logit to -1e10.

    logits: float32 [V]  one row of logits
    top_p:  float in (0, 1]
    returns float32 [V]: the logit where the token survives, -1e10 elsewhere

    The official rule, in float32:
      1. sort the logits ascending and take their softmax;
      2. running total (cumsum) of those probabilities, smallest first;
      3. the threshold index is the first position where the total reaches 1 - top_p;
      4. every token whose logit is >= the sorted logit at that index survives.
    So the most likely tokens survive, in order, until they hold more than top_p of the
    probability, and a token tied with the last survivor survives too.
    """
    raise NotImplementedError
