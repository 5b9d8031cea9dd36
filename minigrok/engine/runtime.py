"""The engine's model: the reference's parameter tree made ready for a device, and the
decoder layer that ``forward`` runs there (``forward(..., layer_fn=...)``).

On the CPU every quantised weight becomes a weights.Int8Weight (the compiled kernel or
numpy tiles instead of widening whole matrices) and the layer is the reference's own, but
for a decoded token, whose products cpu_decode.cpu_decode_layer makes four at a time. On
GPUs the tree is placed by placement.py (resident where it fits, streamed where not), and
the layer function first moves the activations to the layer's GPU, starts a streamed
layer's attention copies, and runs a decoding step through decode.decode_layer's few
kernels. Tests hold both to the reference (tests/test_engine.py, test_cupy.py).
"""

import numpy as np

from ..reference.layer import decoder_layer
from ..reference.quant import QuantizedWeight8bit
from .cpu_decode import cpu_decode_layer
from .decode import decode_fits, decode_layer, decode_plan, decode_scratch
from .placement import enter, place
from .weights import Int8Weight, StreamedWeight, TiedEmbedding

# A checkpoint's array payload starts wherever its pickle header ends, so a float32 array read
# in place is often not 4-byte aligned, and numpy computes on unaligned arrays far slower
# (no BLAS). Arrays up to this size are copied into aligned memory when a model is loaded;
# larger ones (the real embedding matrix, 3.2 GB) stay memory-mapped and are streamed.
ALIGN_COPY_BYTES = 256 << 20


def for_cpu(tree):
    """A host parameter tree (dicts, lists, QuantizedWeight8bit, arrays) ready for the CPU:
    quantised weights as Int8Weight where they lie; small unaligned float arrays copied into
    aligned memory; a large unaligned one (the real model's embeddings) a TiedEmbedding."""
    if isinstance(tree, dict):
        return {k: for_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [for_cpu(v) for v in tree]
    if isinstance(tree, QuantizedWeight8bit):
        return Int8Weight(tree.weight, tree.scales)
    if tree.flags.aligned:
        return tree
    return np.array(tree) if tree.nbytes <= ALIGN_COPY_BYTES else TiedEmbedding(tree)


def gpu_layer_fn(params: dict, cfg, places, home: int):
    """The decoder layer for a model placed on GPUs, and each layer's decode plan: ->
    (layer_fn, plans). ``places[i]`` says where layer i runs; the last layer's output goes
    back to GPU ``home``, where the embeddings are. The plans are made here, once: the
    scratch their steps write (one per GPU, for caches of the model's sequence_len) and, for
    a resident layer, its CUDA graphs (decode.py)."""
    import cupy

    scratch, plans = {}, []
    for layer, where in zip(params["layers"], places):
        with cupy.cuda.Device(where.device):
            if where.device not in scratch:
                scratch[where.device] = decode_scratch(layer, cfg, cfg.sequence_len)
            plans.append(decode_plan(scratch[where.device], graphs=where.resident))
    cupy.cuda.Device(home).use()

    def layer_fn(h, layer, cfg, *, keep, offset=0, cache=None, index=0, trace=None):
        h, keep = enter(places[index].device, h, keep)
        attention = layer["multi_head_attention"]
        streamed = [attention[name] for name in ("query", "key", "value", "linear")
                    if isinstance(attention[name], StreamedWeight)]
        if streamed:                     # their copies start now, one after another
            streamed[0].streamer.prefetch(streamed)
        if trace is None and decode_fits(h, cache, offset, cfg):
            h = decode_layer(h, layer, cfg, keep=keep, offset=offset, cache=cache, index=index,
                             plan=plans[index])
        else:
            h = decoder_layer(h, layer, cfg, keep=keep, offset=offset, cache=cache, index=index,
                              trace=trace)
        if index == len(places) - 1:
            h, = enter(home, h)
        return h
    return layer_fn, plans


def prepare(params: dict, cfg, device: str = "cpu", gpu_memory: float | None = None):
    """Host parameters (checkpoint.model_params) -> (parameters on ``device``, the layer
    function for forward, the layers' GPU decode plans: none on the CPU). ``device``: cpu,
    cuda, cuda:N or cuda:N,M,...; ``gpu_memory`` caps the GiB used per GPU (layers beyond it
    stream)."""
    if device == "cpu":
        return for_cpu(params), cpu_decode_layer, []
    from .devices import parse_devices

    devices = parse_devices(device)
    limit = None if gpu_memory is None else int(gpu_memory * 2**30)
    placed, places, _ = place(params, cfg, devices, limit)
    return (placed, *gpu_layer_fn(placed, cfg, places, devices[0]))
