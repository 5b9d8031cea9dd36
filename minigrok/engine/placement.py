"""The GPU memory plan: which layer lives on which GPU, and which layers stream from the host.

Grok-1 is 318 GB of weights, 4.9 GB per layer of which a token reads only 1.3 GB (attention
and its two experts). ``--device cuda:0,1,...`` places the model like this:

* the embedding matrix (3.2 GB float32, read by the first and the last step) and every
  layer's small tensors (norms, router) go on the first GPU / the layer's GPU;
* layers are given to the GPUs in order, each GPU taking whole layers while they fit in its
  free memory (less a reserve for activations, the KV cache and stream buffers): 4 x 80 GB
  or 3 x 141 GB hold all 64 layers;
* layers that fit nowhere stay in the host's memory map on the last GPU's account, and
  the Streamer (stream.py) copies just what a token needs (attention, the 2 routed experts) when it
  needs it, the copies running beside the GPU's compute.

A token's activations [T, D] hop from GPU to GPU between layers; each layer's KV cache is made
on its own GPU (attention.layer_cache, on the GPU the layer runs on).
"""

from typing import NamedTuple

from ..errors import MinigrokError
from ..formats.checkpoint import active_int8_bytes, layer_bytes
from ..reference.config import Config
from ..reference.quant import QuantizedWeight8bit
from .stream import Streamer
from .weights import Int8Weight, StreamedWeight


class Place(NamedTuple):
    """Where one layer runs: ``device`` (from plan: the GPU's position in the list it was
    given; once placed: its CUDA device id) and whether its int8 weights are resident there
    or streamed from the host."""

    device: int
    resident: bool


def reserve_bytes(cfg: Config, streaming: bool) -> int:
    """Memory kept free on a GPU: working room for the largest product (a prefill widens one
    [D, F] matrix to float32, twice over while it multiplies), plus, where layers stream, the
    int8 bytes of one token's layer (attention and two experts) twice over: one layer's
    weights in use while the next ones arrive."""
    room = 256 * 2**20 + 2 * 4 * cfg.emb_size * cfg.ffn_size
    if streaming:
        room += 2 * active_int8_bytes(cfg) // cfg.num_layers
    return room


def plan(cfg: Config, free: list[int]) -> list[Place]:
    """One Place per layer, given the bytes ``free`` on each GPU (in the order named).

    GPU 0 holds the float32 embeddings first. Layers fill the GPUs in order; those left over
    stream on the last GPU, whose reserve then grows by the stream buffers.
    """
    need = layer_bytes(cfg)
    room = list(free)
    room[0] -= cfg.vocab_size * cfg.emb_size * 4
    if room[0] < reserve_bytes(cfg, False):
        raise MinigrokError(
            f"not enough GPU memory: the first GPU has {free[0] / 2**30:.1f} GiB free, the "
            f"embeddings and working room need "
            f"{(free[0] - room[0] + reserve_bytes(cfg, False)) / 2**30:.1f} GiB")
    places, gpu = [], 0
    for _ in range(cfg.num_layers):
        while gpu < len(room) and room[gpu] - need < reserve_bytes(cfg, False):
            gpu += 1
        if gpu == len(room):
            break
        room[gpu] -= need
        places.append(Place(gpu, True))
    left = cfg.num_layers - len(places)
    if left:
        # The last GPU gives back resident layers until the stream buffers fit beside them.
        last = len(room) - 1
        while room[last] < reserve_bytes(cfg, True) and places and places[-1].device == last:
            places.pop()
            room[last] += need
            left += 1
        if room[last] < reserve_bytes(cfg, True):
            raise MinigrokError(
                f"not enough GPU memory: the last GPU has {room[last] / 2**30:.1f} GiB free "
                f"after its share, streaming needs {reserve_bytes(cfg, True) / 2**30:.1f} GiB")
        places += [Place(last, False)] * left
    return places


def _upload(tree, streamer: Streamer, streamed: bool = False):
    """A parameter tree on the current GPU: float arrays copied, quantised weights copied and
    wrapped (Int8Weight), or, for a streamed layer, left in host memory (StreamedWeight)."""
    if isinstance(tree, dict):
        return {k: _upload(v, streamer, streamed) for k, v in tree.items()}
    if isinstance(tree, QuantizedWeight8bit):
        if streamed:
            return StreamedWeight(tree.weight, tree.scales, streamer)
        return Int8Weight(streamer.upload(tree.weight), streamer.upload(tree.scales))
    return streamer.upload(tree)


def place(params: dict, cfg: Config, devices: list[int], limit: int | None = None,
          streamer: Streamer | None = None):
    """Host parameters (checkpoint.model_params) -> (the same tree on ``devices``, one Place
    per layer with the real device id, and the Streamer of its streamed layers).

    ``limit`` caps the bytes used per GPU (to try streaming on a GPU that could hold it all).
    The embeddings and final norm go on the first GPU; a streamed layer's int8 weights stay
    host arrays.
    """
    import cupy

    streamer = streamer or Streamer()
    free = []
    for d in devices:
        with cupy.cuda.Device(d) as gpu:
            free.append(min(gpu.mem_info[0], limit or gpu.mem_info[0]))
    plans = plan(cfg, free)
    with cupy.cuda.Device(devices[0]):
        out = {"in_out_embed": _upload(params["in_out_embed"], streamer),
               "rms_norm": _upload(params["rms_norm"], streamer), "layers": []}
    places = []
    for layer, where in zip(params["layers"], plans):
        device = devices[where.device]
        with cupy.cuda.Device(device):
            out["layers"].append(_upload(layer, streamer, streamed=not where.resident))
        places.append(Place(device, where.resident))
    cupy.cuda.Device(devices[0]).use()
    return out, places, streamer


def enter(device: int, *arrays):
    """Make GPU ``device`` the current one and return ``arrays`` moved there (a no-op for
    arrays already on it)."""
    import cupy

    cupy.cuda.Device(device).use()
    # Activations [T, D] and the pad mask [T]: a few KB, copied through the host.
    return tuple(a if a.device.id == device else cupy.asarray(cupy.asnumpy(a)) for a in arrays)
