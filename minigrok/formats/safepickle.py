"""Read Grok-1 checkpoint pickles without unpickling them.

The threat: the official loader calls ``pickle.load`` on each of the checkpoint's 770
files. A pickle is a program for a small stack machine whose GLOBAL and REDUCE opcodes
import and call any Python callable, so a tampered or substituted file runs whatever it
likes (``os.system``, ``eval``, ...) the moment it is opened.

The approach: this module interprets the opcode stream itself and never calls pickle.
Only the opcodes the standard pickler emits (protocols 2 to 5) for numpy arrays and the
official ``__main__.QuantizedWeight8bit`` dataclass are accepted, and only a handful of
globals; those are never imported, they become inert markers, and REDUCE, NEWOBJ and
BUILD on them are interpreted here with their arguments checked. Array payloads are never
read: we note where they lie and return read-only views of an ``np.memmap`` of the file,
so a 3 GB tensor costs no copy and no time. Any problem, a truncated or bit-flipped file
included, is a CheckpointError naming the file and the byte offset.
"""

import os
import pickletools
import struct

import numpy as np

from ..environment import open_regular
from ..errors import CheckpointError
from ..reference.quant import QuantizedWeight8bit

# bfloat16 as its uint16 bits, marked so callers can tell it from genuine uint16 (no
# ml_dtypes at run time).
BF16_BITS = np.dtype("<u2", metadata={"format": "bfloat16"})

MAX_OPCODES = 100_000    # a real tensor file has about a hundred; bounds time and memory
MAX_LINE = 256           # GLOBAL / PUT / GET take a newline-terminated argument
MAX_NDIM = 32

# The names the bfloat16 scalar type may have been pickled under: pickle writes a type as its
# ``__module__`` and ``__qualname__``. Checked by pickling a bfloat16 array with every ml_dtypes
# release from 0.0.4 to 0.7.0, protocols 2 to 5: all write ``ml_dtypes.bfloat16``, and so does
# jax 0.4.25 (``jnp.bfloat16`` is a wrapper; the arrays' type is ml_dtypes'). The jaxlib
# releases on the package index (0.4.13 on) all take bfloat16 from ml_dtypes. Before ml_dtypes,
# TensorFlow's and XLA's own bfloat16 types were C types named plain "bfloat16" (their
# bfloat16.cc), which pickle would look for in builtins and refuse to write, unless a module
# was set on them that we have not found. The other
# spellings below name the same type where an install could expose it under another module:
# the extension modules that define it (``_custom_floats`` up to ml_dtypes 0.2.0,
# ``_ml_dtypes_ext`` from 0.3), jax's re-exports, and jaxlib's extension (not checked: no
# jaxlib before 0.4.13 is on the index). None is ever imported, so accepting one costs no
# safety: each may only be the dtype of an array, as the scales' is.
BFLOAT16_SPELLINGS = (
    ("ml_dtypes", "bfloat16"),
    ("ml_dtypes._ml_dtypes_ext", "bfloat16"),
    ("ml_dtypes._custom_floats", "bfloat16"),
    ("jax.numpy", "bfloat16"),
    ("jax._src.dtypes", "bfloat16"),
    ("jaxlib.xla_extension", "bfloat16"),
)

# (module, name) -> what we let it stand for. numpy 1.x writes numpy.core, 2.x numpy._core;
# protocol 2 writes bytes as _codecs.encode(str, 'latin1'), and b'' as bytes().
_GLOBALS = {
    ("__main__", "QuantizedWeight8bit"): "qw",
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    **{spelling: "bfloat16" for spelling in BFLOAT16_SPELLINGS},
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
}

# numpy.dtype(name, ...) is only ever given one of these plain numeric types: an 'O' (object)
# dtype over mapped bytes would make numpy dereference pointers taken from the file.
_DTYPE_NAMES = frozenset("i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8 c8 c16".split())


class _Bad(Exception):
    """A problem at the current opcode; the parser adds the file name and offset."""


class _Unknown(_Bad):
    """An opcode or global the reader does not know: maybe a real file written by a stack
    minigrok has not seen, so the message says how to report it."""


class _Global:
    """A whitelisted global: an inert marker for the role it may play, never imported."""

    def __init__(self, role, label):
        self.role, self.label = role, label


class _Bytes:
    """A bytes/bytearray value: its place in the file, or (protocol 2 only) a copy."""
    def __init__(self, offset, length, copy=None):
        self.offset, self.length, self.copy = offset, length, copy


class _Dtype:
    """numpy.dtype(...) awaiting the BUILD that sets its byte order."""
    def __init__(self, dtype, bf16):
        self.dtype, self.bf16, self.built, self.used = dtype, bf16, False, False


class _Array:
    """An ndarray: spec = (bytes, dtype, shape, order, axes), None until BUILD fills it.

    Objects that pickle would mutate in place stay mutable here, so a memo reference
    taken before BUILD sees the built object, exactly as with pickle.
    """
    def __init__(self, spec=None):
        self.spec = spec


class _QW:
    """__main__.QuantizedWeight8bit(): its __dict__, filled by BUILD."""

    def __init__(self):
        self.state = {}


def _kind(v):
    """'an int', 'a dtype': what a value is, for messages (never its repr: it may be huge)."""
    n = {_Global: "global", _Bytes: "bytes value", _Dtype: "dtype", _Array: "array",
         _QW: "QuantizedWeight8bit", type(None): "None"}.get(type(v), type(v).__name__)
    return ("an " if n[0] in "aeiou" else "a ") + n


def _brief(v, limit: int = 20) -> str:
    """A value from the file for a message: a str as ASCII of its first ``limit`` characters,
    anything else by its kind. Never a repr or str of the value itself: four bytes (a memo
    GET, TUPLE2, MEMOIZE) make a tuple that holds the one before it twice, doubling its repr,
    so a pickle of 200 bytes holds a tuple whose repr is 2**50 characters long (and a str
    may be as long as the file)."""
    if type(v) is str:
        return ascii(v[:limit]) + ("..." if len(v) > limit else "")
    return _kind(v)


def _shape(v, what="shape"):
    if type(v) is not tuple or len(v) > MAX_NDIM or any(type(d) is not int or d < 0 for d in v):
        raise _Bad(f"{what} is not a tuple of at most {MAX_NDIM} non-negative ints")
    return v


_OPS = {}


def _op(code):
    """Register a handler: only opcodes registered here are ever accepted."""
    def register(fn):
        _OPS[code[0]] = fn
        return fn
    return register


class _Parser:
    def __init__(self, f, size, name, report=""):
        self.f, self.size, self.name, self.report = f, size, name, report
        self.pos = self.at = 0
        self.protocol, self.globals = None, []              # what survey() reports
        self.frame_end = None          # protocol 4+: reads may not run past a frame's end
        self.opname = "opcode"
        self.stack, self.metastack, self.memo = [], [], {}
        self.result = None

    # --- reading: opcodes and their small arguments only; payloads are skipped ---------

    def need(self, n, what):
        if self.frame_end is not None:
            if self.pos == self.frame_end:         # as pickle: an exhausted frame just ends
                self.frame_end = None
            elif self.pos + n > self.frame_end:
                raise _Bad(f"{what} ({n} bytes) crosses the end of the frame at byte "
                           f"{self.frame_end}")
        if self.pos + n > self.size:
            raise CheckpointError(f"{self.name}: truncated: {what} of {n} bytes at byte "
                                  f"{self.pos} runs past end of file ({self.size} bytes)")

    def take(self, n):
        self.need(n, f"{self.opname} argument" if self.pos > self.at else "opcode")
        self.f.seek(self.pos)
        data = self.f.read(n)
        if len(data) != n:
            raise _Bad("file changed while being read")
        self.pos += n
        return data

    def uint(self, n):
        return int.from_bytes(self.take(n), "little")

    def line(self):
        self.f.seek(self.pos)
        end = self.f.read(MAX_LINE).find(b"\n")
        if end < 0:
            raise _Bad(f"{self.opname} argument is not a line of under {MAX_LINE} bytes")
        return self.take(end + 1)[:-1].decode("ascii", "replace")

    def text(self, n):
        try:
            return self.take(n).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _Bad("string is not valid UTF-8") from None

    def payload(self, n):
        """A bytes value: only its place is noted, the data stays on disk."""
        self.need(n, "payload")
        self.pos += n
        return _Bytes(self.pos - n, n)

    def small(self, b):
        """The content of a short bytes value (the b'b' _reconstruct is given)."""
        if b.copy is not None or b.length > 16:
            return b.copy
        self.f.seek(b.offset)
        return self.f.read(b.length)

    # --- the stack ---------------------------------------------------------------------

    def push(self, v):
        self.stack.append(v)

    def pop(self, n=None):
        if len(self.stack) < (n or 1):
            raise _Bad("stack underflow")
        if n is None:
            return self.stack.pop()
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def top(self):
        if not self.stack:
            raise _Bad("stack underflow")
        return self.stack[-1]

    def pop_mark(self):
        if not self.metastack:
            raise _Bad("no MARK to close")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def get(self, i):
        if i not in self.memo:
            raise _Bad(f"memo entry {i} was never stored")
        self.push(self.memo[i])

    def put(self, i):
        self.memo[i] = self.top()

    # --- the loop ------------------------------------------------------------------------

    def run(self):
        try:
            for count in range(MAX_OPCODES + 1):
                self.at, self.opname = self.pos, "opcode"
                code = self.take(1)[0]
                op = pickletools.code2op.get(chr(code))
                self.opname = op.name if op else f"opcode 0x{code:02x}"
                if code not in _OPS:
                    raise _Unknown(f"{self.opname} is not allowed")
                if count == 0 and self.opname != "PROTO":
                    raise _Bad("not a pickle of protocol 2 or later (no PROTO opcode)")
                _OPS[code](self)
                if self.result is not None:
                    return self.result
            raise _Bad(f"more than {MAX_OPCODES} opcodes")
        except _Unknown as e:
            raise CheckpointError(f"{self.name}: byte {self.at}: {e}{self.report}") from None
        except _Bad as e:
            raise CheckpointError(f"{self.name}: byte {self.at}: {e}") from None

    def finish(self, v):
        """What STOP returns, checked: a built array or a complete QuantizedWeight8bit."""
        if isinstance(v, _QW):
            if set(v.state) != {"weight", "scales"}:
                names = sorted(v.state)
                shown = ", ".join(_brief(k) for k in names[:4]) + (", ..." if len(names) > 4
                                                                   else "")
                raise _Bad(f"QuantizedWeight8bit has fields [{shown}], not ['scales', 'weight']")
            for k in ("weight", "scales"):
                self.finish_array(v.state[k], f"QuantizedWeight8bit.{k}")
        else:
            self.finish_array(v, "the pickle")
        return v

    def finish_array(self, v, what):
        if not isinstance(v, _Array):
            raise _Bad(f"{what} holds {_kind(v)}, not an array")
        if v.spec is None:
            raise _Bad(f"{what} holds an array that never got its contents (no BUILD)")


def _materialise(v, mm):
    if isinstance(v, _QW):
        return QuantizedWeight8bit(weight=_materialise(v.state["weight"], mm),
                                   scales=_materialise(v.state["scales"], mm))
    b, dtype, shape, order, axes = v.spec
    if b.copy is not None:            # protocol 2: the bytes came from a string, a copy
        a = np.frombuffer(b.copy, dtype).reshape(shape, order=order)
    else:                             # a view of the mapped file, read-only like the map
        a = np.ndarray(shape, dtype, buffer=mm, offset=b.offset, order=order)
    return a.transpose(axes) if axes else a


def _report_hint(path) -> str:
    """How to report a file the reader does not know: the structure report of its folder."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if os.path.basename(folder) == "ckpt-0":
        folder = os.path.dirname(folder)
    return ("; if this is a real Grok-1 download, this reader does not know how it was written: "
            f"run 'python -m minigrok inspect --checkpoint {folder} --structure' and paste its "
            "report into a bug report")


def load(path):
    """The array or QuantizedWeight8bit a checkpoint file holds, without running pickle.

    Arrays are read-only views of the mapped file; bfloat16 comes back as BF16_BITS.
    Raises CheckpointError for anything but a well-formed file of the expected kind; for an
    opcode or global it does not know, the message says how to report the file.
    """
    name = os.path.basename(os.fspath(path))
    try:
        # A regular file only, checked on the descriptor (a FIFO or a device would hang or
        # never end), and mapped through that same descriptor, so that what was checked and
        # parsed is what gets mapped, even if the name is replaced meanwhile.
        with open(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            v = _Parser(f, size, name, _report_hint(path)).run()
            try:
                # Map the whole file once: one mapping (and one descriptor) per file, however
                # many arrays it holds.
                mm = np.memmap(f, dtype=np.uint8, mode="r", shape=(size,))
            except (OSError, ValueError) as e:     # e.g. the file shrank since it was parsed
                raise CheckpointError(f"{name}: byte 0: cannot map: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{name}: byte 0: cannot read: {e.strerror or e}") from None
    return _materialise(v, mm)


def _holds(v) -> tuple[str, int]:
    """What a parsed file holds, by kind and dtype (no shapes: they differ file to file), and
    its arrays' bytes."""
    def dtype(a):
        return "bfloat16" if a.spec[1].metadata else str(a.spec[1])
    if isinstance(v, _QW):
        w, s = v.state["weight"], v.state["scales"]
        return (f"QuantizedWeight8bit({dtype(w)}, {dtype(s)})",
                w.spec[0].length + s.spec[0].length)
    return f"{dtype(v)} array", v.spec[0].length


def survey(path) -> dict:
    """What one checkpoint file is made of, for a report on a download, without reading its
    arrays or importing anything: {"protocol": int or None, "globals": [module.name, ...] in
    the order they appear, allowed or not, "holds": what the file holds or why it could not
    be read, "payload_bytes": the bytes of its arrays, "file_bytes"}."""
    name = os.path.basename(os.fspath(path))
    try:
        with open(open_regular(path), "rb") as f:       # regular files only, as load()
            size = os.fstat(f.fileno()).st_size
            p = _Parser(f, size, name)
            try:
                holds, payload = _holds(p.run())
            except CheckpointError as e:
                holds, payload = "unreadable: " + str(e).split(": ", 1)[1], 0
    except OSError as e:
        return {"protocol": None, "globals": [], "holds": f"unreadable: {e.strerror or e}",
                "payload_bytes": 0, "file_bytes": 0}
    return {"protocol": p.protocol, "globals": p.globals, "holds": holds,
            "payload_bytes": payload, "file_bytes": size}


# --- opcode handlers ---------------------------------------------------------------------

@_op(b"\x80")
def _proto(p):
    v = p.uint(1)
    if p.at != 0 or not 2 <= v <= 5:
        raise _Unknown(f"PROTO {v} (only protocols 2 to 5, once, at the start)")
    p.protocol = v


@_op(b"\x95")
def _frame(p):
    n = p.uint(8)
    if p.frame_end is not None and p.pos != p.frame_end:
        raise _Bad("FRAME before the end of the previous frame")
    p.frame_end = None
    p.need(n, "frame")
    p.frame_end = p.pos + n


@_op(b".")
def _stop(p):
    if p.metastack or len(p.stack) != 1:
        raise _Bad(f"STOP with {len(p.stack)} values on the stack and "
                   f"{len(p.metastack)} open MARKs (expected one value)")
    if p.pos != p.size:
        raise _Bad(f"{p.size - p.pos} trailing bytes after STOP")
    p.result = p.finish(p.stack[0])


@_op(b"(")
def _mark(p):
    p.metastack.append(p.stack)
    p.stack = []


# memo: store and fetch; text forms (PUT/GET) take a decimal line
_op(b"\x94")(lambda p: p.put(len(p.memo)))
_op(b"q")(lambda p: p.put(p.uint(1)))
_op(b"r")(lambda p: p.put(p.uint(4)))
_op(b"h")(lambda p: p.get(p.uint(1)))
_op(b"j")(lambda p: p.get(p.uint(4)))


def _decimal(p):
    s = p.line()
    if not (s.isascii() and s.isdigit()):
        raise _Bad(f"{p.opname} index is not a decimal number")
    return int(s)


_op(b"p")(lambda p: p.put(_decimal(p)))
_op(b"g")(lambda p: p.get(_decimal(p)))

# plain values
_op(b"N")(lambda p: p.push(None))
_op(b"\x88")(lambda p: p.push(True))
_op(b"\x89")(lambda p: p.push(False))
_op(b"K")(lambda p: p.push(p.uint(1)))
_op(b"M")(lambda p: p.push(p.uint(2)))
_op(b"J")(lambda p: p.push(int.from_bytes(p.take(4), "little", signed=True)))
_op(b"G")(lambda p: p.push(struct.unpack(">d", p.take(8))[0]))


@_op(b"\x8a")
def _long1(p):
    n = p.uint(1)
    if n > 16:
        raise _Bad(f"LONG1 of {n} bytes (at most 16 accepted)")
    p.push(int.from_bytes(p.take(n), "little", signed=True))


_op(b"\x8c")(lambda p: p.push(p.text(p.uint(1))))               # SHORT_BINUNICODE
_op(b"X")(lambda p: p.push(p.text(p.uint(4))))                  # BINUNICODE
_op(b"\x8d")(lambda p: p.push(p.text(p.uint(8))))               # BINUNICODE8
_op(b"C")(lambda p: p.push(p.payload(p.uint(1))))               # SHORT_BINBYTES
_op(b"B")(lambda p: p.push(p.payload(p.uint(4))))               # BINBYTES
_op(b"\x8e")(lambda p: p.push(p.payload(p.uint(8))))            # BINBYTES8
_op(b"\x96")(lambda p: p.push(p.payload(p.uint(8))))            # BYTEARRAY8 (protocol 5)

# tuples and dicts
_op(b")")(lambda p: p.push(()))
_op(b"t")(lambda p: p.push(tuple(p.pop_mark())))
_op(b"\x85")(lambda p: p.push(tuple(p.pop(1))))
_op(b"\x86")(lambda p: p.push(tuple(p.pop(2))))
_op(b"\x87")(lambda p: p.push(tuple(p.pop(3))))
_op(b"}")(lambda p: p.push({}))


def _setitems(p, d, items):
    if type(d) is not dict:
        raise _Bad(f"{p.opname} on {_kind(d)}, not a dict")
    if len(items) % 2:
        raise _Bad(f"{p.opname} with an odd number of items")
    for k, v in zip(items[::2], items[1::2]):
        if type(k) is not str:
            raise _Bad(f"dict key is {_kind(k)}, not a str")
        d[k] = v


@_op(b"d")
def _dict(p):
    items, d = p.pop_mark(), {}
    _setitems(p, d, items)
    p.push(d)


@_op(b"s")
def _setitem(p):
    items = p.pop(2)
    _setitems(p, p.top(), items)


@_op(b"u")
def _setitems_op(p):
    items = p.pop_mark()
    _setitems(p, p.top(), items)


# globals: looked up in the whitelist, never imported

def _global(p, module, name):
    label = ascii(f"{module[:200]}.{name[:200]}"[:200])
    p.globals.append(label[1:-1])
    role = _GLOBALS.get((module, name))
    if role is None:
        raise _Unknown(f"global {label} is not allowed")
    p.push(_Global(role, label))


_op(b"c")(lambda p: _global(p, p.line(), p.line()))


@_op(b"\x93")
def _stack_global(p):
    module, name = p.pop(2)
    if type(module) is not str or type(name) is not str:
        raise _Bad("STACK_GLOBAL of non-strings")
    _global(p, module, name)


# calls: interpreted here for the whitelisted callables, nothing is ever called

def _dtype_of(v):
    if not isinstance(v, _Dtype):
        raise _Bad(f"expected a dtype, got {_kind(v)}")
    v.used = True       # numpy shares the object: a later BUILD would change this array
    return v.dtype


def _array_spec(b, dtype, shape, order, axes=None):
    if not isinstance(b, _Bytes):
        raise _Bad(f"array data is {_kind(b)}, not bytes")
    n = dtype.itemsize
    for d in shape:
        n *= d
    big = dtype.itemsize
    for d in shape:
        big *= max(d, 1)
    if big > 2**62:       # a zero-size array may still claim absurd dimensions
        raise _Bad(f"array shape {shape} is too large")
    if b.length != n:
        raise _Bad(f"array {shape} of {dtype} needs {n} bytes, payload has {b.length}")
    return (b, dtype, shape, order, axes)


@_op(b"R")
def _reduce(p):
    fn, args = p.pop(2)
    if not isinstance(fn, _Global) or type(args) is not tuple:
        raise _Bad(f"REDUCE of {_kind(fn)} with {_kind(args)} as arguments")
    role, n = fn.role, len(args)
    if role == "reconstruct":        # _reconstruct(ndarray, (0,), b'b'): an empty array
        if not (n == 3 and isinstance(args[0], _Global) and args[0].role == "ndarray"
                and args[1] == (0,) and isinstance(args[2], _Bytes)
                and p.small(args[2]) == b"b"):
            raise _Bad(f"{fn.label} called with unexpected arguments")
        p.push(_Array())
    elif role == "dtype":            # numpy.dtype('f4' | ml_dtypes.bfloat16, False, True)
        # copy=True as pickle writes it: numpy ignores BUILD on a shared, uncopied dtype
        if not (n == 3 and args[1] is False and args[2] is True):
            raise _Bad("numpy.dtype called with arguments other than (type, False, True)")
        t = args[0]
        if isinstance(t, _Global) and t.role == "bfloat16":
            p.push(_Dtype(BF16_BITS, True))
        elif type(t) is str and (t[1:] if t[:1] in ("<", ">", "=") else t) in _DTYPE_NAMES:
            p.push(_Dtype(np.dtype(t), False))
        else:
            raise _Bad(f"numpy.dtype of {_brief(t)} is not allowed")
    elif role == "frombuffer":       # protocol 5: _frombuffer(buf, dtype, shape, order[, axes])
        if n not in (4, 5):
            raise _Bad(f"{fn.label} called with {n} arguments")
        dtype, shape = _dtype_of(args[1]), _shape(args[2])
        order, axes = args[3], None
        if n == 5 and order == "K":  # a permuted layout: C-order data, then transposed
            axes = _shape(args[4], "axis order")
            if sorted(axes) != list(range(len(shape))):
                raise _Bad(f"axis order {axes} is not a permutation of {len(shape)} axes")
            order = "C"
        elif order not in ("C", "F") or (n == 5 and args[4] is not None):
            raise _Bad(f"{fn.label} with order {_brief(order)}")
        p.push(_Array(_array_spec(args[0], dtype, shape, order, axes)))
    elif role == "encode":           # protocol 2 bytes: _codecs.encode(str, 'latin1')
        if not (n == 2 and type(args[0]) is str and args[1] == "latin1"):
            raise _Bad("_codecs.encode allowed only as (str, 'latin1')")
        try:
            p.push(_Bytes(None, len(args[0]), args[0].encode("latin-1")))
        except UnicodeEncodeError:
            raise _Bad("_codecs.encode of a string that is not latin-1") from None
    elif role == "bytes" and n == 0:  # protocol 2 b'': bytes()
        p.push(_Bytes(None, 0, b""))
    else:
        raise _Bad(f"{fn.label} cannot be called like this")


@_op(b"\x81")
def _newobj(p):
    cls, args = p.pop(2)
    if not (isinstance(cls, _Global) and cls.role == "qw" and args == ()):
        raise _Bad(f"NEWOBJ of {_kind(cls)}: only QuantizedWeight8bit() is allowed")
    p.push(_QW())


@_op(b"b")
def _build(p):
    state = p.pop()
    obj = p.top()
    if isinstance(obj, _Dtype):      # (3, byteorder, None, None, None, elsize, align, flags)
        # Only the byte order is used. The type is fixed by its whitelisted name; size,
        # alignment and flags are ignored, numpy would believe them (crafted flags are how
        # a pickle makes numpy treat raw data as object pointers).
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3
                and state[2:5] == (None, None, None)
                and all(type(x) is int for x in state[5:])):
            raise _Bad("dtype state is not (3, order, None, None, None, int, int, int)")
        if obj.built or obj.used:
            raise _Bad("dtype BUILD twice or after use")
        order, d = state[1], obj.dtype
        if obj.bf16 and order not in ("<", "="):
            raise _Bad(f"bfloat16 with byte order {_brief(order)}")
        if order not in ("<", ">", "=", "|") or (order == "|" and d.itemsize > 1):
            raise _Bad(f"dtype {d} with byte order {_brief(order)}")
        if not obj.bf16 and order != "|":
            obj.dtype = d.newbyteorder(order)
        obj.built = True
    elif isinstance(obj, _Array):    # (1, shape, dtype, fortran_order, data)
        if not (type(state) is tuple and len(state) == 5 and state[0] == 1
                and type(state[3]) is bool):
            raise _Bad("array state is not (1, shape, dtype, bool, data)")
        if obj.spec is not None:
            raise _Bad("array BUILD twice")
        obj.spec = _array_spec(state[4], _dtype_of(state[2]), _shape(state[1]),
                               "F" if state[3] else "C")
    elif isinstance(obj, _QW):       # the dataclass's __dict__
        if type(state) is not dict:
            raise _Bad(f"QuantizedWeight8bit state is {_kind(state)}, not a dict")
        obj.state.update(state)
    else:
        raise _Bad(f"BUILD of {_kind(obj)}")
