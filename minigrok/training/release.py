"""From trained float32 weights to the release format: int8 weights with bf16 block scales.

Every matrix the official checkpoint stores as a QuantizedWeight8bit is quantised exactly
as the release is laid out (reference/quant.quantize: absmax per column, per row block of
8 for the attention output and the expert down-projection); the embeddings, norms and
routers stay float32, as there. The held-out loss is measured before and after, so the
quantisation's cost is a number, not a guess.
"""

from ..formats.checkpoint import EMBEDDINGS, FINAL_NORM, layer_prefix
from ..reference.config import ROW_BLOCKS
from ..reference.quant import dequantize, quantize
from ..reference.xp import array_module, to_numpy
from .network import heldout_loss

QUANTISED = {("multi_head_attention", "query"): 1, ("multi_head_attention", "key"): 1,
             ("multi_head_attention", "value"): 1, ("multi_head_attention", "linear"): ROW_BLOCKS,
             ("moe", "linear"): 1, ("moe", "linear_v"): 1, ("moe", "linear_1"): ROW_BLOCKS}


def to_release(params) -> dict:
    """The training tree -> {official name: float32 array or QuantizedWeight8bit} (numpy),
    the embeddings still reduced [V', D]."""
    tensors = {EMBEDDINGS: to_numpy(params["in_out_embed"]),
               FINAL_NORM: to_numpy(params["rms_norm"])}
    for i, layer in enumerate(params["layers"]):
        p = layer_prefix(i)
        for (group, name), blocks in QUANTISED.items():
            tensors[f"{p}{group}/{name}/w"] = quantize(to_numpy(layer[group][name]), blocks)
        tensors[p + "router/w"] = to_numpy(layer["router"])
        for norm in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            tensors[f"{p}{norm}/scale"] = to_numpy(layer[norm])
    return tensors


def dequantised(params, tensors, xp) -> dict:
    """The training tree with every quantised matrix replaced by its int8 value x scale."""
    layers = []
    for i, layer in enumerate(params["layers"]):
        new = {**layer, "multi_head_attention": dict(layer["multi_head_attention"]),
               "moe": dict(layer["moe"])}
        for group, name in QUANTISED:
            new[group][name] = xp.asarray(dequantize(tensors[f"{layer_prefix(i)}{group}/{name}/w"]))
        layers.append(new)
    return {**params, "layers": layers}


def release(params, cfg, held_x, held_y, others: int, batch: int) -> dict:
    """{"tensors", "heldout_loss" (float weights), "heldout_loss_int8" (as released)} on
    held-out windows held_x, held_y: [W, T] reduced ids."""
    tensors = to_release(params)
    xp = array_module(held_x)
    return {"tensors": tensors,
            "heldout_loss": heldout_loss(params, cfg, held_x, held_y, others, batch),
            "heldout_loss_int8": heldout_loss(dequantised(params, tensors, xp), cfg, held_x,
                                              held_y, others, batch)}

