"""Exercise greedy_generate: generate text one token at a time, greedily (lessons 11-12).

Check your work:  python -m minigrok exercises check greedy_generate
"""

import numpy as np  # noqa: F401  (you will want it)


def greedy_generate(forward, prompt, max_new_tokens, eos_token):
    """Continue ``prompt`` with the most likely token, again and again.

    forward:        forward(tokens) -> float32 [T, V]: the model (the checker's is a tiny
                    random Grok-1) run on a whole sequence of T token ids, int [T]; row t
                    holds the logits for the token after position t. No KV cache: give it
                    the whole sequence every time.
    prompt:         int [P]  the prompt's ids, as encode_prompt made them
    max_new_tokens: int >= 0 the most tokens to generate
    eos_token:      int      the end-of-sequence id (2 in Grok-1): generation ends after it
    returns int [n]: the new tokens only, n <= max_new_tokens; the last one is eos_token
            when the model produced it, and it is then the only eos_token returned

    Greedy: each new token is the argmax of the logits for the position after the last
    token so far. minigrok's generate_tokens (temperature 0) gives the same tokens, with a
    KV cache.
    """
    raise NotImplementedError
