"""A simulated CuPy: numpy arrays that remember which GPU they are on, for machines without one.

Only for tests/test_gpu_simulated.py, which runs tests/test_cupy.py against it: it checks
minigrok's GPU *glue* (the memory plan, streaming from the host, the split over two GPUs,
which path a product takes, the kernel's launch geometry), not CuPy or a GPU. Arrays on
different devices, or a host numpy array, mixed in one operation raise, as they fail on a
real GPU. RawKernel runs the int8 GEMV's block decomposition, and the decode kernels'
formulas, in numpy. Products under CuPy's TF32 setting see their float32 inputs cut to TF32
(_core/_routines_linalg.py). A stream capture (Stream.begin_capture) records RawKernel launches,
arguments as given (arrays by reference, scalars by value, as a CUDA graph keeps pointers and
values), for Graph.launch to replay; anything else done during a capture raises (in CuPy it
would be an allocation, a copy or a library call that a graph must not hold).
"""

import re
import sys
import time
import types

import numpy

NUM_DEVICES = 2
_current = [0]
_capture = []          # the launches being recorded, while a stream captures
_allocator = [lambda nbytes: None]      # cuda.set_allocator's: called with each new array's size


def _not_capturing(what):
    if _capture:
        raise RuntimeError(f"simulated cupy: {what} during a stream capture")


class ndarray(numpy.ndarray):
    def __array_finalize__(self, obj):
        self.dev = getattr(obj, "dev", _current[0])

    @property
    def device(self):
        return Device(self.dev)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        _not_capturing("get()")
        return numpy.array(self)

    def set(self, arr, stream=None):
        """Host -> this array, on this array's device (like CuPy's ndarray.set)."""
        if isinstance(arr, ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("simulated cupy: set() needs a host array of the same shape and dtype")
        if self.dev != _current[0]:
            raise ValueError("simulated cupy: set() on an array of another device")
        numpy.copyto(numpy.asarray(self), arr)

    def _check(self, args):
        _not_capturing("an array operation")
        if any(_is_host(a) for a in args):
            raise TypeError("simulated cupy: a numpy array in a cupy operation")
        devices = {a.dev for a in args if isinstance(a, ndarray)}
        if len(devices) > 1 or (devices and devices != {_current[0]}):
            raise ValueError(f"simulated cupy: arrays on devices {devices}, current {_current[0]}")

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        self._check(list(inputs) + list(kw.get("out", ())))
        if "out" in kw:
            kw["out"] = tuple(numpy.asarray(o) for o in kw["out"])
        inputs = _unwrap(inputs)
        if ufunc is numpy.matmul:             # cuBLAS, TF32 where minigrok allows it
            inputs = _linalg.matmul_inputs(inputs)
        return _wrap(getattr(ufunc, method)(*inputs, **kw))

    def __array_function__(self, func, types_, args, kw):
        self._check(list(_flatten(args)) + list(_flatten(kw)))
        return _wrap(func(*_unwrap(args), **_unwrap(kw)))

    def __getitem__(self, key):
        self._check(list(_flatten(key)))
        return super().__getitem__(_unwrap(key))

    def __setitem__(self, key, value):
        self._check(list(_flatten((key, value))))
        return super().__setitem__(_unwrap(key), _unwrap(value))


def _is_host(a):
    return isinstance(a, numpy.ndarray) and not isinstance(a, ndarray) and a.ndim > 0


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for i in x:
            yield from _flatten(i)
    elif isinstance(x, dict):
        yield from _flatten(list(x.values()))
    else:
        yield x


def _unwrap(x):
    if isinstance(x, ndarray):
        return numpy.asarray(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(i) for i in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(r):
    if isinstance(r, (list, tuple)):
        return type(r)(_wrap(i) for i in r)
    if isinstance(r, numpy.ndarray) and not isinstance(r, ndarray):
        if r.base is None:                    # a new array, not a view: device memory
            _allocator[0](r.nbytes)
        out = r.view(ndarray)
        out.dev = _current[0]
        return out
    return r


def get_array_module(*arrays):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else numpy


def asarray(a, dtype=None):
    """Host -> current GPU (a copy); an array on another GPU raises, like mixing devices."""
    _not_capturing("asarray")
    if isinstance(a, ndarray):
        if a.dev != _current[0]:
            raise ValueError("simulated cupy: asarray of an array on another device")
        return a if dtype is None or a.dtype == dtype else _wrap(numpy.asarray(a).astype(dtype))
    if getattr(getattr(a, "dtype", None), "metadata", None):
        # stricter than CuPy may be: minigrok hands over plain dtypes (engine/devices.plain)
        raise TypeError("simulated cupy: a dtype with metadata")
    return _wrap(numpy.array(a, dtype=dtype))


ascontiguousarray = asarray


def asnumpy(a):
    return numpy.array(numpy.asarray(a))


def matmul(a, b):
    """a @ b: through ndarray.__array_ufunc__, which checks the devices and applies the
    compute type (cupy._core._routines_linalg)."""
    return numpy.matmul(a, b)


def __getattr__(name):                    # everything else: numpy's, on simulated arrays
    f = getattr(numpy, name)
    if isinstance(f, type) or not callable(f):
        return f

    def call(*args, **kw):
        _not_capturing(f"cupy.{name}")
        if any(_is_host(a) for a in _flatten((args, kw))):
            raise TypeError(f"simulated cupy: a numpy array passed to cupy.{name}")
        return _wrap(f(*_unwrap(args), **_unwrap(kw)))

    if isinstance(f, numpy.ufunc):
        # cupy.ufunc.at (CuPy 12 and later), in place on the simulated array itself
        def at(a, indices, b=None):
            if any(_is_host(x) for x in _flatten((a, indices, b))):
                raise TypeError(f"simulated cupy: a numpy array passed to cupy.{name}.at")
            f.at(a, indices, *(() if b is None else (b,)))
        call.at = at
    return call


class Device:
    def __init__(self, index=None):
        self.id = _current[0] if index is None else index
        if not 0 <= self.id < NUM_DEVICES:
            raise RuntimeError(f"simulated cupy: no device {self.id}")

    def use(self):
        _current[0] = self.id

    def __enter__(self):
        self._before = _current[0]
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._before

    @property
    def mem_info(self):
        return 80 * 2**30, 80 * 2**30

    def synchronize(self):
        pass


class Stream:
    ptr = 0

    def __init__(self, non_blocking=False):
        self.non_blocking = non_blocking

    def begin_capture(self):
        # CuPy: the capturing stream cannot be the (blocking) default stream
        assert self.non_blocking and not _capture, "capture on a non-blocking stream, one at a time"
        _capture.append([])
        self.device = _current[0]

    def end_capture(self):
        return Graph(_capture.pop(), self.device)

    def record(self):
        event = Event()
        event.record()
        return event

    def wait_event(self, event):
        assert isinstance(event, Event)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def synchronize(self):
        pass


class Graph:
    """A captured stream's launches, replayed in order on the device it was captured on."""

    def __init__(self, launches, device):
        self.launches, self.device = launches, device

    def launch(self, stream=None):
        assert _current[0] == self.device, "a graph runs on the device it was captured on"
        assert self.launches, "an empty graph"
        for kernel, grid, block, args, shared_mem in self.launches:
            kernel.run(grid, block, args, shared_mem)


class Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


_GEMV_KERNELS = ("int8_gemv", "int8_gemv_routed", "int8_gemv_three", "int8_gemv_tokens")


class RawKernel:
    """The int8 GEMV's block decomposition in numpy, checking the launch it is given; the
    decode kernels (minigrok/engine/kernels/decode.cu) as numpy functions of the same
    arguments."""

    def __init__(self, source, name, options=()):
        assert "__global__" in source and f" {name}(" in source
        self.name = name
        if name in _GEMV_KERNELS:
            # gemv.cu does not compile without -DGEMV_TOKENS=n, and int8_gemv_tokens takes
            # that many tokens; -DWIDEN_BY_I2F (another widening, the same numbers) is the
            # only other option it knows
            tokens = [int(m[1]) for o in options for m in [re.fullmatch(r"-DGEMV_TOKENS=(\d+)", o)]
                      if m]
            assert len(tokens) == 1 and tokens[0] > 0, f"gemv.cu needs -DGEMV_TOKENS=n: {options}"
            assert set(options) <= {f"-DGEMV_TOKENS={tokens[0]}", "-DWIDEN_BY_I2F"}, options
            self.tokens = tokens[0] if name == "int8_gemv_tokens" else 1
        else:
            assert "--fmad=false" in options
            self.decode = getattr(_DecodeKernels, name)

    def __call__(self, grid, block, args, shared_mem=0):
        if _capture:                          # recorded as the graph will hold it
            _capture[-1].append((self, grid, block, tuple(args), shared_mem))
            return
        return self.run(grid, block, args, shared_mem)

    def run(self, grid, block, args, shared_mem=0):
        if any(_is_host(a) for a in args) or \
                any(a.dev != _current[0] for a in args if isinstance(a, ndarray)):
            raise ValueError(f"simulated cupy: {self.name} given an array off the current device")
        if self.name not in _GEMV_KERNELS:
            return self.decode(grid, block, shared_mem, *(
                numpy.asarray(a) if isinstance(a, ndarray) else a for a in args))
        a = [numpy.asarray(v) if isinstance(v, ndarray) else int(v) for v in args]
        grid = tuple(grid) + (1,) * (3 - len(grid))            # CuPy takes 1 to 3 dimensions
        if self.name == "int8_gemv_three":
            return self.three(grid, block, a)
        if self.name == "int8_gemv_routed":
            return self.routed(grid, block, a)
        assert grid[2] == 1
        return self.gemv(grid, block, *a)

    def routed(self, grid, block, a):
        x, x_step, w_a, s_a, w_b, s_b, experts, per_expert, partial, arrived, y = a[:11]
        n_out, tiles, Z = a[11], grid[0], grid[2]      # products by experts read "on the GPU"
        assert experts.dtype == numpy.int32 and Z == experts.size * per_expert
        assert x.shape == ((1, w_a.shape[1]) if x_step == 0 else (experts.size, x_step))
        assert partial.shape == (Z, grid[1], n_out) and y.shape == (Z, n_out)
        assert arrived.size >= tiles * Z
        for z in range(Z):
            slot, b = z // per_expert, z % per_expert != 0
            e, row = int(experts[slot]), 0 if x_step == 0 else slot
            self.gemv(grid, block, x[row:row + 1], (w_b if b else w_a)[e],
                      (s_b if b else s_a)[e], partial[z][:, None], arrived[z * tiles:][:tiles],
                      y[z:z + 1], *a[11:])

    def three(self, grid, block, a):
        x, (partial, arrived, widest, rows) = a[0], a[16:]
        assert grid[0] * 512 >= widest > (grid[0] - 1) * 512 and 1 <= grid[2] <= 3
        assert partial.shape == (grid[2], grid[1], widest) and arrived.size >= grid[0] * grid[2]
        for z in range(grid[2]):                       # each product on its own columns
            w, s, y, n_out, rows_per_scale = a[1 + 5 * z:6 + 5 * z]
            self.gemv((-(-n_out // 512), grid[1], 1), block, x, w, s,
                      partial[z][:, None, :n_out], arrived, y, n_out, rows, rows_per_scale)

    def gemv(self, grid, block, x, w, s, partial, arrived, y, n_out, rows, rows_per_scale):
        tokens = self.tokens
        assert block == (32, 8) and grid[0] * 512 >= n_out > (grid[0] - 1) * 512
        assert grid[1] * rows == w.shape[0] and x.shape == (tokens, w.shape[0])
        assert x.flags.c_contiguous and partial.shape == (grid[1], tokens, n_out)
        assert arrived.size >= grid[0] and not arrived.any() and y.shape == (tokens, n_out)
        scale = (s.astype(numpy.uint32) << 16).view(numpy.float32)
        for b in range(grid[1]):
            r0 = b * rows
            assert r0 // rows_per_scale == (r0 + rows - 1) // rows_per_scale
            partial[b] = (x[:, r0:r0 + rows] @ w[r0:r0 + rows].astype(numpy.float32)
                          ) * scale[r0 // rows_per_scale]
        y[...] = partial.sum(axis=0)


class _DecodeKernels:
    @staticmethod
    def begin_step(grid, block, shared_mem, h, keep, pos, inp, step_keep, step_pos, n):
        assert grid[0] * block[0] >= n == inp.size == h.size
        inp.ravel()[:] = h.ravel()
        step_keep[0], step_pos[0] = keep[0], pos

    @staticmethod
    def rms_norm(grid, block, shared_mem, x, scale, residual, has_residual, out, n, eps):
        assert grid == (1,) and x.size == n == out.size
        y = x.ravel() / numpy.sqrt((x.ravel() * x.ravel()).mean() + eps) * scale
        out.ravel()[:] = residual.ravel() + y if has_residual else y

    @staticmethod
    def rope_and_cache(grid, block, shared_mem, q, k, v, keep, q_rot, cache_k, cache_v,
                       cache_keep, step_pos, H, K, d, base):
        assert grid[0] * block[0] >= max((H + K) * d // 2, K * d)
        assert step_pos.dtype == numpy.int32 and step_pos.shape == (1,)
        pos, half = int(step_pos[0]), d // 2
        angle = numpy.float32(pos) * (1 / base ** (numpy.arange(0, d, 2, dtype=numpy.float32) / d))
        c, s = numpy.cos(angle), numpy.sin(angle)

        def rotate(x):
            x1, x2 = x[..., :half], x[..., half:]
            return numpy.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
        q_rot.reshape(H, d)[:] = rotate(q.reshape(H, d))
        cache_k[pos] = rotate(k.reshape(K, d))
        cache_v[pos] = v.reshape(K, d)
        cache_keep[pos] = keep[0]

    @staticmethod
    def attention_part(grid, block, shared_mem, q_rot, cache_k, cache_v, cache_keep, part,
                       part_max, part_sum, step_pos, K, G, d, chunk, multiplier, cap, masked):
        S = int(step_pos[0]) + 1
        P, P_max = -(-S // chunk), grid[0] // K
        assert grid == (K * P_max,) and P <= P_max and S <= cache_k.shape[0]
        assert shared_mem >= G * chunk * 4 and block[0] % 32 == 0
        # parts [>= P_max, H, d], [>= P_max, H]: a scratch made for longer caches will do
        assert part.shape[0] >= P_max and part.shape[1:] == (K * G, d)
        assert part_max.shape == part_sum.shape == (part.shape[0], K * G)
        q = q_rot.reshape(K, G, d)
        for c in range(P):
            rows = slice(c * chunk, min(S, (c + 1) * chunk))
            scores = numpy.einsum("kgd,skd->kgs", q, cache_k[rows]) * multiplier
            scores = numpy.where(cache_keep[rows], cap * numpy.tanh(scores / cap),
                                 numpy.float32(masked))
            top = scores.max(axis=-1, keepdims=True)
            p = numpy.exp(scores - top)
            total = p.sum(axis=-1, keepdims=True)
            part.reshape(-1, K, G, d)[c] = numpy.einsum("kgs,skd->kgd", p / total, cache_v[rows])
            part_max[c], part_sum[c] = top.ravel(), total.ravel()

    @staticmethod
    def attention_combine(grid, block, shared_mem, part, part_max, part_sum, out, step_pos,
                          chunk, H, d):
        P = (int(step_pos[0]) + chunk) // chunk
        assert grid == (H,) and part.shape[1:] == (H, d) and P <= part.shape[0]
        assert out.size == H * d
        part, part_max, part_sum = part[:P], part_max[:P], part_sum[:P]
        share = part_sum * numpy.exp(part_max - part_max.max(axis=0))          # [P, H]
        out.reshape(H, d)[:] = numpy.einsum("ph,phd->hd", share / share.sum(axis=0), part)

    @staticmethod
    def router_logits(grid, block, shared_mem, x, router, logits, D, E):
        assert grid == (E,) and block == (256,) and x.size == D and router.shape == (D, E)
        logits[:] = (x.ravel().astype(numpy.float64) @ router.astype(numpy.float64)).astype(
            numpy.float32)

    @staticmethod
    def route_top_k(grid, block, shared_mem, logits, probs, ids, gates, E, k):
        p = numpy.exp(logits.ravel() - logits.max())
        probs[:] = p / p.sum()
        ids[:] = numpy.sort(numpy.argsort(-logits, kind="stable")[:k])
        gates[:] = probs[ids]

    @staticmethod
    def gelu_mul(grid, block, shared_mem, xwv, out, width, n):
        assert grid[0] * block[0] >= n == out.size == xwv.size // 2 and n % width == 0
        xv = xwv.reshape(-1, 2, width)
        x = xv[:, 0]
        c = numpy.float32(0.7978845608028654)
        out.reshape(-1, width)[:] = \
            0.5 * x * (1 + numpy.tanh(c * (x + numpy.float32(0.044715) * x**3))) * xv[:, 1]

    @staticmethod
    def add_experts(grid, block, shared_mem, gates, y, m, k, n):
        assert grid[0] * block[0] >= n == m.size and gates.size == k and y.shape == (k, n)
        total = numpy.zeros(n, dtype=numpy.float32)
        for e in range(k):
            total = total + gates[e] * y[e]
        m.ravel()[:] = total


def _set_allocator(allocator=None):
    _allocator[0] = allocator or (lambda nbytes: None)


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


cuda = types.SimpleNamespace(Device=Device, Stream=Stream, Event=Event, get_elapsed_time=_elapsed,
                             get_current_stream=Stream, alloc_pinned_memory=bytearray,
                             set_allocator=_set_allocator,
                             runtime=types.SimpleNamespace(getDeviceCount=lambda: NUM_DEVICES))


class _Pool:
    def total_bytes(self):
        return 0

    def malloc(self, nbytes):
        return None



def get_default_memory_pool():
    return _Pool()


class _Random:
    def randint(self, low, high, shape, dtype=None):
        return _wrap(numpy.random.default_rng(0).integers(low, high, shape).astype(dtype))

    def standard_normal(self, shape, dtype=None):
        return _wrap(numpy.random.default_rng(0).standard_normal(shape).astype(dtype))


random = _Random()
__version__ = "simulated"

from ._core import _routines_linalg as _linalg  # noqa: E402  (it imports nothing back)
