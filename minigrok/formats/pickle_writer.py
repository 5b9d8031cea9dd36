"""Write numpy arrays and QuantizedWeight8bit objects as the official checkpoint's pickles.

The released files were made by ``pickle.dump`` (protocol 4) of numpy arrays and of the
official ``__main__.QuantizedWeight8bit`` dataclass. minigrok cannot simply call
``pickle.dump``: the bfloat16 scales would need ml_dtypes, and a 3 GB tensor would have to
sit in memory as one ``bytes`` object. So this module emits the same opcodes itself, byte
for byte what CPython's pickler writes (the tests compare with ``pickle.dumps``), and streams
each array payload from a callback.

What pickle writes for an ndarray (``ndarray.__reduce__``):
    _reconstruct(ndarray, (0,), b'b')                         -> an empty array
    BUILD (1, shape, dtype, fortran_order, raw_bytes)         -> its real contents
and for a dtype: ``numpy.dtype(name_or_scalar_type, False, True)`` then BUILD with its
state tuple. Strings and globals are memoised (a second use is a BINGET), tuples are new
objects each time. Protocol 4 groups small opcodes into 64 KiB frames; a payload of 64 KiB
or more is written outside any frame, which is what lets a reader memory-map it in place.
"""

import io
import struct
from typing import Callable, NamedTuple

import numpy as np

# numpy 1.x, which wrote the released checkpoint, names the function under numpy.core;
# numpy 2 still resolves that name, and the official environment (numpy 1.26) needs it.
RECONSTRUCT_MODULE = "numpy.core.multiarray"

_FRAME_TARGET = 64 * 1024
_FRAME_MIN = 4


class Global(NamedTuple):
    module: str
    name: str


class Payload(NamedTuple):
    """``nbytes`` raw bytes, produced by ``write(file)`` when the pickle reaches them."""

    nbytes: int
    write: Callable


class Reduce(NamedTuple):
    """``func(*args)``, then BUILD with ``state`` unless it is None."""

    func: object
    args: tuple
    state: object = None


class NewObj(NamedTuple):
    """``cls.__new__(cls)`` then BUILD with ``state`` (what a dataclass pickles to)."""

    cls: Global
    state: dict


class _Pickler:
    """Just enough of CPython's protocol-4 pickler for the values above."""

    def __init__(self, out):
        self.out = out
        self.frame = io.BytesIO()
        self.memo = {}                                           # value -> memo index
        self.memo_len = 0

    def op(self, data: bytes):
        self.frame.write(data)

    def commit_frame(self, force=False):
        data = self.frame.getvalue()
        if data and (force or len(data) >= _FRAME_TARGET):
            if len(data) >= _FRAME_MIN:
                self.out.write(b"\x95" + struct.pack("<Q", len(data)))
            self.out.write(data)
            self.frame = io.BytesIO()

    def memoize(self, key):
        if key is not None:
            self.memo[key] = self.memo_len
        self.memo_len += 1
        self.op(b"\x94")                                         # MEMOIZE

    def save(self, obj):
        # CPython's pickler closes a frame that holds 64 KiB or more whenever it starts
        # saving another object.
        self.commit_frame()
        key = (type(obj), obj) if isinstance(obj, (str, bytes, Global)) else None
        if key in self.memo:
            i = self.memo[key]
            self.op(b"h" + struct.pack("<B", i) if i < 256 else b"j" + struct.pack("<I", i))
        elif obj is None:
            self.op(b"N")
        elif obj is True or obj is False:
            self.op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj <= 0xFF:
                self.op(b"K" + struct.pack("<B", obj))
            elif 0 <= obj <= 0xFFFF:
                self.op(b"M" + struct.pack("<H", obj))
            elif -(2**31) <= obj < 2**31:
                self.op(b"J" + struct.pack("<i", obj))
            else:                                                # LONG1, two's complement
                data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                self.op(b"\x8a" + struct.pack("<B", len(data)) + data)
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            self.op(b"\x8c" + struct.pack("<B", len(data)) + data if len(data) < 256
                    else b"X" + struct.pack("<I", len(data)) + data)
            self.memoize(key)
        elif isinstance(obj, bytes):                             # only the tiny b'b'
            self.op(b"C" + struct.pack("<B", len(obj)) + obj)
            self.memoize(key)
        elif isinstance(obj, Payload):
            self.save_payload(obj)
        elif isinstance(obj, Global):
            self.save(obj.module)
            self.save(obj.name)
            self.op(b"\x93")                                     # STACK_GLOBAL
            self.memoize(key)
        elif isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(obj.args)
            self.op(b"R")
            self.memoize(None)
            if obj.state is not None:
                self.save(obj.state)
                self.op(b"b")
        elif isinstance(obj, NewObj):
            self.save(obj.cls)
            self.op(b")\x81")                                    # EMPTY_TUPLE NEWOBJ
            self.memoize(None)
            self.save(obj.state)
            self.op(b"b")
        elif isinstance(obj, dict):
            self.op(b"}")
            self.memoize(None)
            items = list(obj.items())
            if len(items) > 1:
                self.op(b"(")
            for k, v in items:
                self.save(k)
                self.save(v)
            if items:
                self.op(b"u" if len(items) > 1 else b"s")
        elif isinstance(obj, tuple):
            if not obj:
                self.op(b")")
            else:
                if len(obj) > 3:
                    self.op(b"(")
                for item in obj:
                    self.save(item)
                self.op(b"\x85\x86\x87"[len(obj) - 1:len(obj)] if len(obj) <= 3 else b"t")
                self.memoize(None)
        else:
            raise TypeError(f"pickle_writer cannot write {type(obj).__name__}")

    def save_payload(self, p: Payload):
        n = p.nbytes
        if n <= 0xFF:
            header = b"C" + struct.pack("<B", n)
        elif n > 0xFFFFFFFF:
            header = b"\x8e" + struct.pack("<Q", n)
        else:
            header = b"B" + struct.pack("<I", n)
        if n <= 0xFF or n < _FRAME_TARGET:
            self.op(header)
            p.write(self.frame)
        else:
            self.commit_frame(force=True)
            self.out.write(header)
            p.write(self.out)
        self.memoize(None)

    def dump(self, obj):
        self.out.write(b"\x80\x04")                              # PROTO 4
        self.save(obj)
        self.op(b".")                                            # STOP
        self.commit_frame(force=True)


def dump(obj, out):
    """Write ``obj`` (built from the NamedTuples above and plain values) to the file ``out``."""
    _Pickler(out).dump(obj)


def dtype_value(dtype, bfloat16: bool = False):
    """How ``numpy.dtype`` pickles: the constructor call and its BUILD state."""
    dtype = np.dtype(dtype)
    if bfloat16:
        # ml_dtypes' scalar type stands in for the name; its state records size 2, align 2
        # and the flags numpy gives user-defined dtypes.
        return Reduce(Global("numpy", "dtype"), (Global("ml_dtypes", "bfloat16"), False, True),
                      (3, "<", None, None, None, 2, 2, 64))
    order = "|" if dtype.itemsize == 1 else "<"
    name = dtype.str[1:]                                        # 'f4', 'i1'
    return Reduce(Global("numpy", "dtype"), (name, False, True),
                  (3, order, None, None, None, -1, -1, 0))


def array_value(shape, dtype, write, bfloat16=False, module=RECONSTRUCT_MODULE):
    """An ndarray of ``shape`` whose C-order little-endian bytes ``write(file)`` produces."""
    itemsize = 2 if bfloat16 else np.dtype(dtype).itemsize
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    empty = Reduce(Global(module, "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"))
    state = (1, tuple(int(s) for s in shape), dtype_value(dtype, bfloat16), False,
             Payload(nbytes, write))
    return empty._replace(state=state)


def array_of(a, bfloat16=False, module=RECONSTRUCT_MODULE):
    """``array_value`` for an in-memory array (bf16 given as its uint16 bits)."""
    a = np.asarray(a, order="C")                     # (ascontiguousarray would make 0-d 1-d)
    return array_value(a.shape, a.dtype, lambda f: f.write(a.tobytes()), bfloat16, module)


def quantized_value(weight, scales):
    """A ``__main__.QuantizedWeight8bit`` holding two array values."""
    return NewObj(Global("__main__", "QuantizedWeight8bit"), {"weight": weight, "scales": scales})
