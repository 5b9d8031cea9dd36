"""The GPU memory plan: which layer lives on which GPU, and which layers stream from the host.

Grok-1 is 318 GB of weights, 4.9 GB per layer of which a token reads only 1.3 GB (attention
and its two experts). ``--device cuda:0,1,...`` places the model like this:

* the embedding matrix (3.2 GB float32, read by the first and the last step) and every
  layer's small tensors (norms, router) go on the first GPU / the layer's GPU;
* layers are given to the GPUs in order, each GPU taking whole layers while they fit in its
  free memory (less a reserve for activations, the KV cache and stream buffers): 4 x 80 GB
  or 3 x 141 GB hold all 64 layers;
* layers that fit nowhere stay in the host's memory map on the last GPU's account, and
  stream.fetch copies just what a token needs (attention, the 2 routed experts) when it
  needs it, the copies running beside the GPU's compute.

A token's activations [T, D] hop from GPU to GPU between layers; each layer's KV cache is made
on its own GPU (attention.new_cache).
"""

from typing import NamedTuple

from . import stream
from .checkpoint import active_int8_bytes
from .config import Config
from .errors import MinigrokError
from .quant import QuantizedWeight8bit


class Place(NamedTuple):
    """Where one layer runs: ``device`` (from plan: the GPU's position in the list it was
    given; once placed: its CUDA device id) and whether its int8 weights are resident there
    or streamed from the host."""

    device: int
    resident: bool


def parse_devices(device: str) -> list[int]:
    """``cuda`` -> [0], ``cuda:2`` -> [2], ``cuda:0,1,3`` -> [0, 1, 3]."""
    _, _, ids = device.partition(":")
    try:
        devices = [int(i) for i in ids.split(",")] if ids else [0]
    except ValueError:
        raise MinigrokError(f"unknown device {device!r}: use cpu, cuda, cuda:N or "
                            "cuda:N,M,...") from None
    if len(set(devices)) != len(devices) or min(devices) < 0:
        raise MinigrokError(f"device {device!r}: each GPU may be named once")
    return devices


def layer_bytes(cfg: Config) -> int:
    """Bytes of one layer's weights: int8, their bf16 scales, the float32 router and norms."""
    D, F, E = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    weights = D * q + 2 * D * kv + q * D + E * 3 * D * F
    scales = 2 * (q + 2 * kv + 8 * D + E * (2 * F + 8 * D))     # bf16 [B, out] each
    return weights + scales + 4 * (D * E + 4 * D)


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


def _to(tree):
    """Every array of a parameter tree copied to the current GPU."""
    if isinstance(tree, dict):
        return {k: _to(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return type(tree)(*(_to(v) for v in tree))
    return stream.upload(tree)


def place(params: dict, cfg: Config, devices: list[int], limit: int | None = None):
    """Host parameters (model.model_params) -> the same tree placed on ``devices``.

    ``limit`` caps the bytes used per GPU (to try streaming on a GPU that could hold it all).
    The tree and each layer dict gain a "place" entry (a Place with the real device id); a
    streamed layer's int8 weights stay host arrays.
    """
    import cupy

    free = []
    for d in devices:
        with cupy.cuda.Device(d) as gpu:
            free.append(min(gpu.mem_info[0], limit or gpu.mem_info[0]))
    places = plan(cfg, free)
    with cupy.cuda.Device(devices[0]):
        out = {"in_out_embed": _to(params["in_out_embed"]),
               "rms_norm": _to(params["rms_norm"]), "layers": [],
               "place": Place(devices[0], True)}
    for layer, where in zip(params["layers"], places):
        device = devices[where.device]
        with cupy.cuda.Device(device):
            if where.resident:
                placed = _to(layer)
            else:                         # the int8 weights stay in the host memory map
                placed = {k: (v if k in ("multi_head_attention", "moe") else _to(v))
                          for k, v in layer.items()}
                for block in ("multi_head_attention", "moe"):
                    placed[block] = {k: (w if isinstance(w, QuantizedWeight8bit) else
                                         _to(w)) for k, w in layer[block].items()}
        placed["place"] = Place(device, where.resident)
        out["layers"].append(placed)
    cupy.cuda.Device(devices[0]).use()
    return out


def enter(where: Place | None, *arrays):
    """Make ``where``'s GPU the current one and return ``arrays`` moved there.

    A no-op on the CPU (``where`` is None) and for arrays already on that GPU.
    """
    if where is None:
        return arrays
    import cupy

    cupy.cuda.Device(where.device).use()
    # Activations [T, D] and the pad mask [T]: a few KB, copied through the host.
    return tuple(a if a.device.id == where.device else cupy.asarray(cupy.asnumpy(a))
                 for a in arrays)
