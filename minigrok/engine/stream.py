"""Streaming weights from the host to a GPU, for the layers the memory plan left on the host.

A streamed layer's int8 weights stay in the checkpoint's memory map (placement.py), wrapped as
weights.StreamedWeight. A token needs only its attention weights and the two routed experts,
1.3 GB of Grok-1's 4.9 GB layer, and that is all that crosses to the GPU. Copies run on one
background thread, in the order asked for, on their own CUDA stream: once a layer knows what it
needs (its four attention matrices on entry, each routed expert's three as the MoE takes its
view of them), the copies queue back to back and the GPU multiplies by each matrix while the
next ones are still on their way. Nothing holds a whole layer anywhere.

A copy from ordinary (pageable) host memory ran at 6.4-9 GB/s on an H200 machine: the
driver stages it through its own pinned buffer on one thread. minigrok stages it itself:
several threads copy 64 MB pieces of the memory map into two pinned buffers in turn, and
each piece goes to the GPU asynchronously while the next is filled. There, pinned memory
reached the GPU at 55 GB/s and one thread's memcpy ran at 9-11 GB/s; a streamed layer's
1.3 GB now arrives at 19-21 GB/s (it was 6.8).
Each model has its own Streamer: its copier thread, its queue of copies and its pinned
buffers are nobody else's.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .devices import plain

# Copies queued at most: two experts' three matrices, what one decoded token takes from a
# layer. A prefill that routes to all 8 experts gets the rest copied as each is used, so the
# GPU never holds more than the memory plan's streaming reserve allows for.
AHEAD = 6
STAGE_BYTES = 64 << 20        # one pinned staging buffer (two are used in turn)
STAGE_THREADS = min(8, os.cpu_count() or 1)   # threads filling a staging buffer


def _key(qw):
    """A host weight's identity: its address and shape (an expert's view is a new object)."""
    return qw.weight.__array_interface__["data"][0], qw.weight.shape


class Streamer:
    """Copies host weights to the GPU for one model: in the background (``prefetch``), or
    now (``fetch``), through pinned staging buffers of ``stage_bytes`` (``upload``)."""

    def __init__(self, stage_bytes: int = STAGE_BYTES, ahead: int = AHEAD):
        self.stage_bytes, self.ahead = stage_bytes, ahead
        self._copier = None
        self._fillers = None
        self._pending = {}            # _key(weight) -> Future of the GPU copy
        self._streams = {}            # GPU -> the copier's CUDA stream
        self._staging = []            # [pinned numpy uint8 buffer, event of its last upload]
        self._stage_lock = threading.Lock()
        self._lock = threading.Lock()

    def copy(self, qw, device: int, compute):
        """qw's int8 weight and scales copied to GPU ``device`` (runs on the copier thread):
        a pair (weight, scales) of CuPy arrays.

        compute: the stream the model runs on. CuPy's memory pool gives a freed block back to
        the stream that allocated it at once, even while the compute stream may still be
        reading it (a kernel queued before the weight was dropped). So the copy first
        allocates, then waits for everything queued on the compute stream by then: any block
        it was just given was dropped before that point, and the kernels reading it were
        queued before they dropped it.
        """
        import cupy

        with cupy.cuda.Device(device):
            if device not in self._streams:
                self._streams[device] = cupy.cuda.Stream(non_blocking=True)   # not waiting
            stream = self._streams[device]
            weight, scales = np.ascontiguousarray(qw.weight), np.ascontiguousarray(plain(qw.scales))
            with stream:
                out = cupy.empty(weight.shape, weight.dtype), cupy.empty(scales.shape, scales.dtype)
            stream.wait_event(compute.record())
            self._upload(weight, out[0], stream)
            self._upload(scales, out[1], stream)
            stream.synchronize()
        return out

    def upload(self, host):
        """A copy of a host array on the current GPU, staged like the streamed copies (the
        load of resident layers: plain copies from the memory map ran at ~2 GB/s on an H200
        machine)."""
        import cupy

        host = np.ascontiguousarray(plain(host))
        out = cupy.empty(host.shape, host.dtype)
        stream = cupy.cuda.get_current_stream()
        self._upload(host, out, stream)
        stream.synchronize()
        return out

    def _upload(self, host, device_array, stream):
        """host (numpy, contiguous) -> device_array through the pinned staging buffers, on
        stream. Small arrays (scales) go straight from pageable memory."""
        if host.nbytes < self.stage_bytes // 64:
            device_array.set(host, stream=stream)
            return
        with self._stage_lock:                # the copier thread and fetch() may both copy
            self._staged_upload(host, device_array, stream)

    def _staged_upload(self, host, device_array, stream):
        import cupy

        if not self._staging:
            self._staging.extend(
                [np.frombuffer(cupy.cuda.alloc_pinned_memory(self.stage_bytes), np.uint8,
                               self.stage_bytes), None] for _ in range(2))
        if self._fillers is None:
            self._fillers = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="minigrok-stage")
        src, dst = host.reshape(-1).view(np.uint8), device_array.reshape(-1).view(cupy.uint8)
        size = len(self._staging[0][0])
        for i, start in enumerate(range(0, src.size, size)):
            buffer = self._staging[i % 2]
            if buffer[1] is not None:
                buffer[1].synchronize()          # its last piece has reached the GPU
            piece = src[start:start + size]
            stage = buffer[0][:piece.size]
            step = -(-piece.size // STAGE_THREADS)
            list(self._fillers.map(lambda a: np.copyto(stage[a:a + step], piece[a:a + step]),
                                   range(0, piece.size, step)))
            dst[start:start + piece.size].set(stage, stream=stream)
            buffer[1] = stream.record()

    def prefetch(self, weights):
        """Start copying ``weights`` (host weights with .weight and .scales) to the current
        GPU, in order, up to ``ahead`` copies queued; those already queued are skipped."""
        import cupy

        device = cupy.cuda.Device().id
        with self._lock:
            for qw in weights:
                if _key(qw) in self._pending:
                    continue
                if len(self._pending) >= self.ahead:
                    break
                if self._copier is None:
                    self._copier = ThreadPoolExecutor(1, thread_name_prefix="minigrok-stream")
                self._pending[_key(qw)] = self._copier.submit(
                    self.copy, qw, device, cupy.cuda.get_current_stream())

    def fetch(self, qw):
        """A host weight on the current GPU, (weight, scales): the prefetched copy, or one
        made now."""
        import cupy

        with self._lock:
            future = self._pending.pop(_key(qw), None)
        if future is None:                                    # not queued: copy it now
            return self.copy(qw, cupy.cuda.Device().id, cupy.cuda.get_current_stream())
        return future.result()
