"""The whole Grok-1 forward pass: tokens -> logits.

    h = in_out_embed[tokens] * embedding_multiplier_scale          # [T, D]
    for each decoder layer (in numeric order 0, 1, 2, ...):  h = decoder_layer(h)
    logits = (rms_norm(h) @ in_out_embed.T) * output_multiplier_scale   # [T, V]

The embedding matrix is used twice (tied input and output embeddings), each time with its
own multiplier. Computation is float32 throughout; the official code runs activations in
bfloat16, which is why the two agree to ~0.5% rather than to the last bit.
"""

import numpy as np

from . import fast, placement
from .checkpoint import EMBEDDINGS, FINAL_NORM, layer_prefix
from .layer import decoder_layer
from .rmsnorm import rms_norm
from .xp import array_module


def layer_params(flat: dict, index: int) -> dict:
    """Layer ``index``'s parameters, nested by their official names under the layer.

    {"multi_head_attention": {"query", "key", "value", "linear"}, "moe": {"linear",
    "linear_v", "linear_1"}, "router", "rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"}
    """
    prefix = layer_prefix(index)
    layer = {"multi_head_attention": {}, "moe": {}}
    for name, value in flat.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")[:-1]              # drop the trailing w / scale
        if len(parts) == 2:
            layer[parts[0]][parts[1]] = value
        else:
            layer[parts[0]] = value
    return layer


def model_params(flat: dict, num_layers: int) -> dict:
    """Checkpoint dict {official name: tensor} -> {"in_out_embed", "rms_norm", "layers": [...]}."""
    return {"in_out_embed": flat[EMBEDDINGS], "rms_norm": flat[FINAL_NORM],
            "layers": [layer_params(flat, i) for i in range(num_layers)]}


def embed(params, cfg, tokens):
    """tokens: [T] int -> [T, D] float32 input embeddings."""
    xp = array_module(tokens)
    rows = xp.asarray(params["in_out_embed"][tokens], dtype=xp.float32)
    return rows * xp.float32(cfg.embedding_multiplier_scale)


def unembed(params, cfg, h):
    """h: [T, D] (after the final norm) -> logits [T, V] float32, with the tied embeddings."""
    xp = array_module(h)
    embeddings = params["in_out_embed"]                                           # [V, D]
    if xp is not np or embeddings.flags.aligned:
        return (h @ embeddings.T) * xp.float32(cfg.output_multiplier_scale)
    # A checkpoint's float32 payload is often not 4-byte aligned (it starts wherever the pickle
    # header ends), and numpy multiplies unaligned arrays without BLAS: small ones were copied
    # at load (xp.align_small); a large one (the real model's 3.2 GB) is streamed by the fast path.
    return fast.matmul_transposed(h, embeddings) * xp.float32(cfg.output_multiplier_scale)


def forward(params, cfg, tokens, cache=None, last_only: bool = False, trace: dict | None = None):
    """Logits for ``tokens``: [T] int (on the parameters' device) -> [T, V] float32.

    Without a cache the tokens are the whole sequence. With a cache (attention.new_cache)
    they continue what it holds: they sit at positions cache["length"]... and the cache is
    extended in place. ``last_only`` returns just the last position's logits, [1, V].

    ``trace``, when given, receives the intermediates and changes nothing else:
    "embeddings" [T, D], "layers" {index: that layer's dict (see decoder_layer)} and
    "final_norm" [T, D] (or [1, D] with last_only). Put a "layers" dict in beforehand, e.g.
    {3: {}, 4: {}}, to record only those layers (each trace holds [H, T, S] probabilities).
    """
    offset = 0 if cache is None else cache["length"]
    # The official mask is ``tokens > pad_token``: pad keys are never attended to.
    keep = tokens > cfg.pad_token
    h = embed(params, cfg, tokens)
    if trace is not None:
        trace["embeddings"] = h
        layer_traces = trace.setdefault("layers", {i: {} for i in range(len(params["layers"]))})
    for i, layer in enumerate(params["layers"]):
        # On GPUs: run on the layer's GPU (see placement.py); nothing happens on the CPU.
        h, keep = placement.enter(layer.get("place"), h, keep)
        h = decoder_layer(h, layer, cfg, keep=keep, offset=offset, cache=cache, index=i,
                          trace=None if trace is None else layer_traces.get(i))
    if cache is not None:
        cache["length"] = offset + len(tokens)
    if last_only:
        h = h[-1:]
    h, = placement.enter(params.get("place"), h)
    h = rms_norm(h, params["rms_norm"])
    if trace is not None:
        trace["final_norm"] = h
    return unembed(params, cfg, h)
