"""Exercise embed_unembed: the tied embeddings and their two multipliers (lesson 04).

Check your work:  python -m minigrok exercises check embed_unembed
"""

import numpy as np  # noqa: F401  (you will want it)


def embed_unembed(embeddings, tokens, h, embedding_multiplier_scale, output_multiplier_scale):
    """Token ids into vectors at the bottom of the model, vectors into logits at the top.

    embeddings: float32 [V, D]  in_out_embed: one row per token, used at both ends
    tokens:     int [T]         token ids
    h:          float32 [U, D]  the last layer's output, already through the final RMSNorm
    embedding_multiplier_scale: float (78.38 = sqrt(6144) in Grok-1)
    output_multiplier_scale:    float (0.5774 = 1/sqrt(3) in Grok-1)
    returns (x, logits):
        x:      float32 [T, D]  the input embeddings, the start of the residual stream
        logits: float32 [U, V]  one score per vocabulary entry for each row of h

    Grok-1 has no separate output matrix: the embeddings are tied. Each end has its own
    multiplier.
    """
    raise NotImplementedError
