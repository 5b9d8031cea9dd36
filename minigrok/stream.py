"""Streaming weights from the host to a GPU, for the layers the memory plan left on the host.

A streamed layer's int8 weights stay in the checkpoint's memory map (placement.py). A token
needs only its attention weights and the two routed experts, 1.3 GB of Grok-1's 4.9 GB
layer, and that is all that crosses to the GPU. Copies run on one background thread, in the
order asked for, on their own CUDA stream: once a layer knows what it needs (attention
asks for its four matrices on entry, the MoE for its experts' six once the router has
chosen), the copies queue back to back and the GPU multiplies by each matrix while the next
ones are still on their way. Nothing holds a whole layer anywhere.

A copy from ordinary (pageable) host memory ran at 6.4-9 GB/s on an H200 machine: the
driver stages it through its own pinned buffer on one thread. minigrok stages it itself:
several threads copy 64 MB pieces of the memory map into two pinned buffers in turn, and
each piece goes to the GPU asynchronously while the next is filled. There, pinned memory
reached the GPU at 55 GB/s and one thread's memcpy ran at 9-11 GB/s; a streamed layer's
1.3 GB now arrives at 19-21 GB/s (it was 6.8).
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .xp import array_module, on_host, plain

# Copies queued at most: two experts' three matrices, what one decoded token takes from a
# layer. A prefill that routes to all 8 experts gets the rest copied as each is used, so the
# GPU never holds more than the memory plan's streaming reserve allows for.
AHEAD = 6
STAGE_BYTES = 64 << 20        # one pinned staging buffer (two are used in turn)
STAGE_THREADS = min(8, os.cpu_count() or 1)   # threads filling a staging buffer
_copier = None
_filler_pool = None
_pending = {}                 # (host address, shape) -> Future of the GPU copy
_streams = {}                 # GPU -> the copier's CUDA stream
_staging = []                 # [pinned numpy uint8 buffer, event of its last upload or None]
_stage_lock = threading.Lock()
_lock = threading.Lock()


def _key(qw):
    return qw.weight.__array_interface__["data"][0], qw.weight.shape


def _copy(qw, device: int, compute):
    """qw's int8 weight and scales copied to GPU ``device`` (runs on the copier thread).

    compute: the stream the model runs on. CuPy's memory pool gives a freed block back to the
    stream that allocated it at once, even while the compute stream may still be reading it
    (a kernel queued before the weight was dropped). So the copy first allocates, then waits
    for everything queued on the compute stream by then: any block it was just given was
    dropped before that point, and the kernels reading it were queued before they dropped it.
    """
    import cupy

    with cupy.cuda.Device(device):
        if device not in _streams:
            _streams[device] = cupy.cuda.Stream(non_blocking=True)   # does not wait for compute
        stream = _streams[device]
        weight, scales = np.ascontiguousarray(qw.weight), np.ascontiguousarray(plain(qw.scales))
        with stream:
            out = type(qw)(cupy.empty(weight.shape, weight.dtype),
                           cupy.empty(scales.shape, scales.dtype))
        stream.wait_event(compute.record())
        _upload(weight, out.weight, stream)
        _upload(scales, out.scales, stream)
        stream.synchronize()
    return out


def upload(host):
    """A copy of a host array on the current GPU, staged like the streamed copies (the load
    of resident layers: plain copies from the memory map ran at ~2 GB/s on an H200 machine)."""
    import cupy

    host = np.ascontiguousarray(plain(host))
    out = cupy.empty(host.shape, host.dtype)
    stream = cupy.cuda.get_current_stream()
    _upload(host, out, stream)
    stream.synchronize()
    return out


def _upload(host, device_array, stream):
    """host (numpy, contiguous) -> device_array through the pinned staging buffers, on stream.

    Small arrays (scales) go straight from pageable memory.
    """
    import cupy

    if host.nbytes < STAGE_BYTES // 64:
        device_array.set(host, stream=stream)
        return
    with _stage_lock:                        # the copier thread and fetch() may both copy
        _staged_upload(host, device_array, stream, cupy)


def _staged_upload(host, device_array, stream, cupy):
    if not _staging:
        _staging.extend([np.frombuffer(cupy.cuda.alloc_pinned_memory(STAGE_BYTES), np.uint8,
                                       STAGE_BYTES), None] for _ in range(2))
    src, dst = host.reshape(-1).view(np.uint8), device_array.reshape(-1).view(cupy.uint8)
    size = len(_staging[0][0])
    for i, start in enumerate(range(0, src.size, size)):
        buffer = _staging[i % 2]
        if buffer[1] is not None:
            buffer[1].synchronize()          # its last piece has reached the GPU
        piece = src[start:start + size]
        stage = buffer[0][:piece.size]
        step = -(-piece.size // STAGE_THREADS)
        list(_fillers().map(lambda a: np.copyto(stage[a:a + step], piece[a:a + step]),
                            range(0, piece.size, step)))
        dst[start:start + piece.size].set(stage, stream=stream)
        buffer[1] = stream.record()


def _fillers():
    global _filler_pool
    if _filler_pool is None:
        _filler_pool = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="minigrok-stage")
    return _filler_pool


def prefetch(weights, x):
    """Start copying those of ``weights`` (QuantizedWeight8bit) still on the host to x's GPU.

    A no-op on the CPU and for weights already on the GPU (resident layers).
    """
    global _copier
    xp = array_module(x)
    if xp is np:
        return
    import cupy

    device = x.device.id
    with _lock:
        for qw in weights:
            if not hasattr(qw, "weight") or not on_host(qw.weight) or _key(qw) in _pending:
                continue
            if len(_pending) >= AHEAD:
                break
            if _copier is None:
                _copier = ThreadPoolExecutor(1, thread_name_prefix="minigrok-stream")
            _pending[_key(qw)] = _copier.submit(_copy, qw, device,
                                                 cupy.cuda.get_current_stream())


def here(qw, x):
    """qw where x is, for several products: a weight still on the host, when x is on a GPU,
    is fetched once (the prefetched copy, or one made now); anything else comes back as is."""
    if array_module(x) is np or not hasattr(qw, "weight") or not on_host(qw.weight):
        return qw
    return fetch(qw)


def fetch(qw):
    """A host weight on the current GPU: the prefetched copy, or one made now."""
    import cupy

    with _lock:
        future = _pending.pop(_key(qw), None)
    if future is None:                                    # not queued: copy it now
        return _copy(qw, cupy.cuda.Device().id, cupy.cuda.get_current_stream())
    return future.result()
