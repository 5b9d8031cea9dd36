"""safepickle: same result as pickle for what numpy writes, refusal for anything else.

The reference for valid files is ``pickle.loads`` itself. For corrupted files it is the
pure-Python unpickler restricted to the same globals (and refusing dtype states that would
let numpy misread memory), so that running it on random bytes is harmless: whenever
safepickle accepts a corrupted file, its answer must be what that reference reads, or,
where the reference refuses, what the uncorrupted file held.
"""

import codecs
import io
import itertools
import mmap
import os
import pickle
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minigrok.errors import CheckpointError
from minigrok.formats import safepickle
from minigrok.reference.quant import QuantizedWeight8bit as MinigrokQW

NAME = "tensor00007_000"


@dataclass
class QuantizedWeight8bit:
    """Stand-in for the official dataclass, installed where pickle looks for it."""

    weight: object
    scales: object


QuantizedWeight8bit.__module__ = "__main__"
sys.modules["__main__"].QuantizedWeight8bit = QuantizedWeight8bit


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("safepickle")


def write(folder, data, name=NAME):
    """Write via rename: arrays still mapped from an earlier file keep their own inode."""
    path = folder / name
    tmp = folder / (name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# --- values to pickle ----------------------------------------------------------------

DTYPES = ["i1", "<f4", ">f4", "<f2", "<i4", ">i4", "<u2", "<f8", "bf16"]


def np_dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bf16" else np.dtype(name)


@st.composite
def arrays(draw, dtype=None, max_dims=4):
    dtype = np_dtype(draw(st.sampled_from(DTYPES)) if dtype is None else dtype)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=4))
    n = int(np.prod(shape)) * dtype.itemsize
    a = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), dtype).reshape(shape).copy()
    layout = draw(st.sampled_from(["C", "F", "permuted", "strided"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "permuted":           # dense but neither C nor F: protocol 5 writes 'K'
        a = a.transpose(draw(st.permutations(range(a.ndim))))
    elif layout == "strided" and a.ndim:
        a = a[::2]
    a.flags.writeable = draw(st.booleans())   # protocol 5: bytes vs bytearray
    return a


quantized = st.builds(QuantizedWeight8bit, arrays("i1", 3), arrays("bf16", 3))
objects = st.one_of(arrays(), quantized)
protocols = st.sampled_from([2, 3, 4, 5])


def canon(a):
    """(shape, dtype, C-order native-endian bytes); bf16 of either kind as 'bfloat16'."""
    assert isinstance(a, np.ndarray), type(a)
    if a.dtype == ml_dtypes.bfloat16 or (a.dtype.metadata or {}).get("format") == "bfloat16":
        return a.shape, "bfloat16", np.ascontiguousarray(a.view(np.uint16)).tobytes()
    native = a.dtype.newbyteorder("=")
    return a.shape, native.kind + str(native.itemsize), \
        np.ascontiguousarray(a, dtype=native).tobytes()


def assert_same(ours, ref):
    if isinstance(ref, QuantizedWeight8bit):
        assert isinstance(ours, MinigrokQW)
        assert canon(ours.weight) == canon(ref.weight)
        assert canon(ours.scales) == canon(ref.scales)
    else:
        assert isinstance(ref, np.ndarray) and type(ours) is np.ndarray
        assert canon(ours) == canon(ref)
        assert ours.flags.c_contiguous == ref.flags.c_contiguous
        assert ours.flags.f_contiguous == ref.flags.f_contiguous


def parts(obj):
    return [obj.weight, obj.scales] if isinstance(obj, MinigrokQW) else [obj]


def mapped(a):
    """Does a's .base chain end in a memory map of the file?"""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


# --- files pickle writes ---------------------------------------------------------------

@settings(max_examples=250, deadline=None)
@given(obj=objects, proto=protocols)
def test_same_as_pickle(folder, obj, proto):
    data = pickle.dumps(obj, protocol=proto)
    ours = safepickle.load(write(folder, data))
    assert_same(ours, pickle.loads(data))
    for a in parts(ours):
        assert not a.flags.writeable
        if proto >= 3:                  # protocol 2 holds bytes in a string: a copy
            assert mapped(a)
        if a.dtype.kind == "u" and a.dtype.metadata:
            assert a.dtype == safepickle.BF16_BITS


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_large_payload_outside_frames(folder, proto):
    # 64 KiB and up is written outside any frame (protocol 4+), then a new frame follows.
    a = np.arange(3 * 70_000, dtype=np.float32).reshape(3, 70_000)
    q = QuantizedWeight8bit(np.full((300, 400), -3, np.int8),
                            np.ones((1, 400), ml_dtypes.bfloat16))
    for obj in (a, np.asfortranarray(a), q):
        data = pickle.dumps(obj, protocol=proto)
        ours = safepickle.load(write(folder, data))
        assert_same(ours, pickle.loads(data))
        assert all(mapped(x) for x in parts(ours)) or proto == 2


def test_no_copy_of_the_payload(folder):
    a = np.arange(4 << 20, dtype=np.float32)            # 16 MB
    path = write(folder, pickle.dumps(a, protocol=4))
    tracemalloc.start()
    try:
        out = safepickle.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert mapped(out) and out[-1] == a[-1]


def test_bfloat16_bits(folder):
    s = np.array([[1.0, -2.5, np.inf]], ml_dtypes.bfloat16)
    out = safepickle.load(write(folder, pickle.dumps(s, protocol=4)))
    assert out.dtype == safepickle.BF16_BITS and out.dtype.metadata == {"format": "bfloat16"}
    assert out.tolist() == [[0x3F80, 0xC020, 0x7F80]]


# --- corrupted files ------------------------------------------------------------------

class _RefUnpickler(pickle._Unpickler):
    """pickle's own algorithm, but only the whitelisted globals and sane dtype states."""

    def find_class(self, module, name):
        try:
            return _REF_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name}") from None

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if not (type(state) is tuple and len(state) == 8 and state[2:5] == (None,) * 3
                    and state[1] in ("<", ">", "=", "|")):
                raise pickle.UnpicklingError("odd dtype state")
            # safepickle ignores size, alignment and flags (a dtype is fixed by its name);
            # numpy would believe them, and crafted flags make it treat data as pointers.
            bf16 = inst == ml_dtypes.bfloat16
            self.stack[-1] = state[:5] + ((2, 2, 64) if bf16 else (-1, -1, 0))
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def _ref_dtype(t, align, copy):
    if t is not ml_dtypes.bfloat16 and t not in safepickle._DTYPE_NAMES:
        raise pickle.UnpicklingError("dtype")
    return np.dtype(t, align, copy)


def _ref_reconstruct(cls, shape, code):
    if shape != (0,):
        raise pickle.UnpicklingError("shape")
    return np._core.multiarray._reconstruct(cls, shape, code)


def _ref_bytes(*args):
    if args:
        raise pickle.UnpicklingError("bytes")
    return b""


_REF_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"): _ref_reconstruct,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _ref_dtype,
    ("ml_dtypes", "bfloat16"): ml_dtypes.bfloat16,
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "bytes"): _ref_bytes,
    ("__main__", "QuantizedWeight8bit"): QuantizedWeight8bit,
}


def check_corrupted(folder, original, data):
    """safepickle refuses ``data`` with a proper message, or reads it correctly."""
    try:
        ours = safepickle.load(write(folder, data))
    except CheckpointError as e:
        msg = str(e)
        assert msg.startswith(NAME + ": ") and "byte" in msg and "\n" not in msg, msg
        return False
    try:
        ref = _RefUnpickler(io.BytesIO(data)).load()
    except Exception:
        ref = pickle.loads(original)    # refused by pickle: must be a harmless change
    assert_same(ours, ref)
    return True


SAMPLES = [np.arange(6, dtype=np.float32).reshape(2, 3),
           np.asfortranarray(np.arange(6, dtype=">i4").reshape(3, 2)),
           np.arange(24, dtype=np.int8).reshape(2, 3, 4).transpose(1, 2, 0),
           np.zeros((0, 3), np.float16),
           np.array(7, np.float32),
           QuantizedWeight8bit(np.arange(6, dtype=np.int8).reshape(2, 3),
                               np.ones((1, 3), ml_dtypes.bfloat16))]


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_every_bit_flip_and_truncation(folder, proto):
    bits = range(8) if proto == 4 else (0, 3, 6)     # all for the official protocol
    accepted = 0
    for obj in SAMPLES:
        original = pickle.dumps(obj, protocol=proto)
        for i, bit in itertools.product(range(len(original)), bits):
            data = bytearray(original)
            data[i] ^= 1 << bit
            accepted += check_corrupted(folder, original, bytes(data))
        for n in range(len(original)):
            with pytest.raises(CheckpointError, match=f"^{NAME}: .*byte"):
                safepickle.load(write(folder, original[:n]))
    assert accepted > 0     # payload flips at least must be read as they are


@st.composite
def corrupted(draw):
    original = pickle.dumps(draw(objects), protocol=draw(protocols))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["set", "set", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if kind == "set" and data:
            data[i] = byte
        elif kind == "insert":
            data.insert(i, byte)
        elif kind == "delete" and data:
            del data[i]
        elif kind == "truncate":
            del data[i:]
    return original, bytes(data)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted())
def test_random_corruption(folder, case):
    check_corrupted(folder, *case)


# --- hostile files ----------------------------------------------------------------------

class Call:
    """Pickles as a call of fn(*args), which pickle.load would make."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def hostile(marker):
    shell = f"touch {marker}"
    return [("system", Call(os.system, shell)),
            ("eval", Call(eval, f"__import__('os').system({shell!r})")),
            ("exec", Call(exec, f"open({str(marker)!r}, 'w')")),
            ("Popen", Call(subprocess.Popen, ["touch", str(marker)])),
            ("__import__", Call(__import__, "os")),
            ("open", Call(open, str(marker), "w"))]


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_code_is_never_run(folder, proto):
    marker = folder / "MARKER"
    for name, evil in hostile(marker):
        arr = np.ones(3, np.float32)
        for obj in (evil, QuantizedWeight8bit(evil, arr), QuantizedWeight8bit(arr, evil),
                    [arr, evil]):
            with pytest.raises(CheckpointError) as e:
                safepickle.load(write(folder, pickle.dumps(obj, protocol=proto)))
            msg = str(e.value)
            assert msg.startswith(NAME + ": byte "), msg
            assert name in msg or "LIST" in msg, msg
            assert not marker.exists()


def test_refusal_message_names_global(folder):
    with pytest.raises(CheckpointError) as e:
        safepickle.load(write(folder, pickle.dumps(Call(os.system, "true"), protocol=4)))
    assert str(e.value).startswith(f"{NAME}: byte ")
    message = str(e.value)
    assert f"global '{os.system.__module__}.system' is not allowed; if this is a real Grok-1 " \
        "download" in message
    assert message.endswith(f"inspect --checkpoint {folder} --structure' and paste its report "
                            "into a bug report")


def test_truncated_payload_message(folder):
    data = pickle.dumps(np.zeros(20_000, np.float32), protocol=4)   # outside any frame
    with pytest.raises(CheckpointError) as e:
        safepickle.load(write(folder, data[:1000]))
    assert str(e.value).startswith(f"{NAME}: truncated: payload of 80000 bytes at byte ")
    assert str(e.value).endswith("runs past end of file (1000 bytes)")


class Reduce:
    """Pickles as fn(*args) followed by BUILD state: crafts whitelisted-but-wrong calls."""

    def __init__(self, fn, args, state=None):
        self.r = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.r


_reconstruct = np._core.multiarray._reconstruct
_frombuffer = np._core.numeric._frombuffer
f4 = np.dtype("f4")


@pytest.mark.parametrize("obj, words", [
    (np.array([1, "a"], dtype=object), "numpy.dtype of 'O8'"),
    (np.array([(1, 2.0)], dtype="i4,f4"), "numpy.dtype of 'V8'"),
    (np.array(["ab"]), "numpy.dtype of 'U2'"),
    (Reduce(codecs.encode, ("x", "rot13")), "latin1"),
    (Reduce(QuantizedWeight8bit, (1, 2)), "cannot be called"),
    (Reduce(np.ndarray, ((3,),)), "cannot be called"),
    (Reduce(_reconstruct, (np.ndarray, (5,), b"b")), "unexpected arguments"),
    (Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (0, 2**40, 2**40), f4, False, b"")),
     "too large"),
    (Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2, 3), f4, False, b"x" * 20)),
     "needs 24 bytes, payload has 20"),
    (Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2, -3), f4, False, b"")), "shape"),
    (Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), "f4", False, b"x" * 8)),
     "expected a dtype"),
    (Reduce(_frombuffer, (bytes(8), f4, (2,), "A")), "order"),
    (Reduce(_frombuffer, (bytes(8), f4, (2, 1), "K", (0, 0))), "permutation"),
    (Reduce(_reconstruct, (np.ndarray, (0,), b"b")), "no BUILD"),
    ((np.ones(2),), "holds a tuple"),
    ({"weight": np.ones(2)}, "holds a dict"),
    (42, "holds an int"),
])
def test_whitelisted_globals_misused(folder, obj, words):
    with pytest.raises(CheckpointError, match=f"^{NAME}: byte [0-9]+: ") as e:
        safepickle.load(write(folder, pickle.dumps(obj, protocol=4)))
    assert words in str(e.value)


def test_quantized_weight_fields(folder):
    q = QuantizedWeight8bit(np.ones((2, 2), np.int8), np.ones((1, 2), ml_dtypes.bfloat16))
    q.extra = 1
    with pytest.raises(CheckpointError, match="fields"):
        safepickle.load(write(folder, pickle.dumps(q, protocol=4)))
    del q.extra, q.scales
    with pytest.raises(CheckpointError, match="fields"):
        safepickle.load(write(folder, pickle.dumps(q, protocol=4)))


@pytest.mark.parametrize("data, words", [
    (b"", "truncated"),
    (b"\x80\x04K\x01.", "holds an int"),
    (pickle.dumps(np.ones(2), protocol=4) + b"\x00", "1 trailing bytes after STOP"),
    (b"cos\nsystem\n(S'true'\ntR.", "not a pickle of protocol 2"),
    (b"\x80\x01N.", "PROTO 1"),
    (b"\x80\x02(X\x04\x00\x00\x00trueios\nsystem\n.", "INST is not allowed"),
    (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.", "global 'os.system'"),
    (b"\x80\x04h\x05.", "memo entry 5"),
    (b"\x80\x04\x86.", "stack underflow"),
    (b"\x80\x04NN.", "2 values"),
    (b"\x80\x04t.", "no MARK"),
    (b"\x80\x04" + b"(" * 200_000 + b".", "more than"),
    (b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.", "truncated: payload"),
    (b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00NJ\x01\x00\x00\x00\x86.",
     "crosses the end of the frame"),
    (b"\x80\x04c" + b"x" * 300 + b"\n", "not a line"),
], ids=lambda v: ascii(v)[:40] if isinstance(v, bytes) else None)
def test_malformed_streams(folder, data, words):
    with pytest.raises(CheckpointError, match=f"^{NAME}: ") as e:
        safepickle.load(write(folder, data))
    assert words in str(e.value) and "byte" in str(e.value)


def test_missing_file(folder):
    with pytest.raises(CheckpointError, match="^tensor99999_000: "):
        safepickle.load(folder / "tensor99999_000")
