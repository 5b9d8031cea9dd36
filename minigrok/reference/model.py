"""The whole Grok-1 forward pass: tokens -> logits.

    h = in_out_embed[tokens] * embedding_multiplier_scale          # [T, D]
    for each decoder layer (in numeric order 0, 1, 2, ...):  h = decoder_layer(h)
    logits = (rms_norm(h) @ in_out_embed.T) * output_multiplier_scale   # [T, V]

The embedding matrix is used twice (tied input and output embeddings), each time with its
own multiplier. Computation is float32 throughout; the official code runs activations in
bfloat16, which is why the two agree to ~0.5% rather than to the last bit.
"""

from .layer import decoder_layer
from .quant import linear
from .rmsnorm import rms_norm
from .xp import array_module


def embed(params, cfg, tokens):
    """tokens: [T] int -> [T, D] float32 input embeddings."""
    xp = array_module(tokens)
    rows = xp.asarray(params["in_out_embed"][tokens], dtype=xp.float32)
    return rows * xp.float32(cfg.embedding_multiplier_scale)


def unembed(params, cfg, h):
    """h: [T, D] (after the final norm) -> logits [T, V] float32, with the tied embeddings."""
    xp = array_module(h)
    logits = linear(h, params["in_out_embed"].T)                                   # [T, V]
    return logits * xp.float32(cfg.output_multiplier_scale)


def forward(params, cfg, tokens, cache=None, last_only: bool = False, trace: dict | None = None,
            layer_fn=decoder_layer):
    """Logits for ``tokens``: [T] int (on the parameters' device) -> [T, V] float32.

    Without a cache the tokens are the whole sequence. With a cache (attention.new_cache)
    they continue what it holds: they sit at positions cache["length"]... and the cache is
    extended in place. ``last_only`` returns just the last position's logits, [1, V].

    ``trace``, when given, receives the intermediates and changes nothing else:
    "embeddings" [T, D], "layers" {index: that layer's dict (see decoder_layer)} and
    "final_norm" [T, D] (or [1, D] with last_only). Put a "layers" dict in beforehand, e.g.
    {3: {}, 4: {}}, to record only those layers (each trace holds [H, T, S] probabilities).

    ``layer_fn`` runs each decoder layer, with decoder_layer's arguments: the engine passes
    its own, which picks the layer's GPU or runs a decoding step in a few fused kernels,
    and must compute what decoder_layer computes (tests hold it to that).
    """
    offset = 0 if cache is None else cache["length"]
    # The official mask is ``tokens > pad_token``: pad keys are never attended to.
    keep = tokens > cfg.pad_token
    h = embed(params, cfg, tokens)
    if trace is not None:
        trace["embeddings"] = h
        layer_traces = trace.setdefault("layers", {i: {} for i in range(len(params["layers"]))})
    for i, layer in enumerate(params["layers"]):
        h = layer_fn(h, layer, cfg, keep=keep, offset=offset, cache=cache, index=i,
                     trace=None if trace is None else layer_traces.get(i))
    if cache is not None:
        cache["length"] = offset + len(tokens)
    if last_only:
        h = h[-1:]
    h = rms_norm(h, params["rms_norm"])
    if trace is not None:
        trace["final_norm"] = h
    return unembed(params, cfg, h)
