"""Golden vectors: every intermediate of one forward pass, in a file any language can read.

A port of Grok-1 (Rust, C++, a GPU kernel, another framework) that gets the final tokens
right can still be wrong: a scrambled layer order, an extra multiplier or renormalised
gates change the numbers without changing a short greedy continuation. A golden file
holds the value after every stage, so a port that dumps its own values under the same
names learns *where* it first departs from Grok-1 (``compare``).

The file is an ordinary ``.npz`` (a zip of ``.npy`` arrays, uncompressed), written by hand
so that the same inputs give the same bytes: fixed timestamps and attributes, entries in
model order. Names, shapes, dtypes and the recommended tolerances are documented in
docs/golden-format.md; the per-layer stages are LAYER_STAGES below.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .engine.runtime import for_cpu
from .environment import open_regular
from .errors import MinigrokError
from .formats.checkpoint import CKPT_DIR, model_params, open_checkpoint
from .reference.generate import check_tokens
from .reference.model import forward

FORMAT = "minigrok-golden"
FORMAT_VERSION = 1

# Per layer, in the order the layer computes them.
LAYER_STAGES = (
    "attn_in",        # [T, D]     rms_norm(h): the attention's input
    "q",              # [T, H, d]  queries after RoPE
    "k",              # [T, K, d]  keys after RoPE
    "v",              # [T, K, d]  values
    "attn_probs",     # [H, T, T]  soft-capped, masked softmax; head h reads kv head h // G
    "attn_context",   # [T, H*d]   probs @ v, heads flattened (h-major), before the projection
    "attn_out",       # [T, D]     output projection (before the rms_norm_1 post-norm)
    "after_attn",     # [T, D]     h + rms_norm_1(attn_out): the residual stream
    "moe_in",         # [T, D]     rms_norm_2(after_attn): the router's and experts' input
    "router_probs",   # [T, E]     softmax over all experts, float32
    "expert_ids",     # [T, k]     int32, top-k by probability, descending (ties: lower id)
    "expert_gates",   # [T, k]     those probabilities, not renormalised
    "moe_out",        # [T, D]     sum of gate * expert(moe_in) (before rms_norm_3)
    "layer_out",      # [T, D]     after_attn + rms_norm_3(moe_out)
)
ID_STAGES = ("expert_ids",)
SHAPES = {
    "tokens": "[T] int32", "embeddings": "[T, D]", "attn_in": "[T, D]", "q": "[T, H, d]",
    "k": "[T, K, d]", "v": "[T, K, d]", "attn_probs": "[H, T, T]", "attn_context": "[T, H*d]",
    "attn_out": "[T, D]", "after_attn": "[T, D]", "moe_in": "[T, D]", "router_probs": "[T, E]",
    "expert_ids": "[T, k] int32", "expert_gates": "[T, k]", "moe_out": "[T, D]",
    "layer_out": "[T, D]", "final_norm": "[T, D]", "logits": "[T, V]",
}

# Recommended tolerances: the largest |actual - expected| allowed, as a fraction of the
# largest |expected| of that array (one number per stage works at any scale). "default"
# covers every float stage but the embeddings (a lookup and one multiply: a float32 port
# gets them to the last bit or nearly). Measured against the official code and justified
# in docs/golden-format.md.
#   float32:  a port computing activations in float32, like minigrok (measured: <= 1.5e-6).
#   bfloat16: a port that, like the official code, runs activations in bfloat16 (measured:
#             <= 5e-3 on the tiny preset; deeper and wider models drift further).
# Expert ids are compared exactly; "tie" is the relative gap between two experts'
# expected probabilities, |p_a - p_b| / max(p_a, p_b), under which choosing the other
# one is a rounding accident (a near-tie), not a bug.
TOLERANCES = {
    "float32": {"embeddings": 1e-6, "default": 1e-4, "tie": 1e-4},
    "bfloat16": {"embeddings": 4e-3, "default": 2e-2, "tie": 5e-2},
}

FINGERPRINT_BYTES = 1 << 20
FINGERPRINT_COVERS = (
    "sha256 over the config (canonical JSON of every field) and, for each tensor file of "
    "ckpt-0/ in index order, its name, its size and the sha256 of its first and last MiB "
    "(pickle header, start of the data, bf16 scales); not the bytes in between")


def layer_name(index: int, stage: str) -> str:
    return f"layer_{index:02d}/{stage}"


# -- computing ---------------------------------------------------------------------------

def trace_arrays(params, cfg, tokens, layers=None) -> dict:
    """One full-sequence forward (no cache) with every intermediate, in model order.

    params: model_params(...) on the CPU; tokens: list of ids; layers: indices to record
    (None: all). Returns {name: numpy array}: float32 activations, int32 ids and tokens.
    """
    ids = np.asarray(tokens, dtype=np.int32)
    wanted = range(cfg.num_layers) if layers is None else layers
    trace = {"layers": {i: {} for i in wanted}}
    logits = forward(params, cfg, ids, trace=trace)
    out = {"tokens": ids, "embeddings": trace["embeddings"]}
    for i in sorted(trace["layers"]):
        for stage in LAYER_STAGES:
            out[layer_name(i, stage)] = trace["layers"][i][stage]
    out["final_norm"] = trace["final_norm"]
    out["logits"] = logits
    return {name: _portable(name, a) for name, a in out.items()}


def _portable(name, a):
    """Little-endian float32, or int32 for ids and tokens, C order."""
    a = np.asarray(a)
    stage = name.rsplit("/", 1)[-1]
    dtype = "<i4" if stage in ID_STAGES or name == "tokens" else "<f4"
    return np.ascontiguousarray(a, dtype=dtype)


def closest_routing(arrays: dict, k: int) -> dict | None:
    """Where the recorded tokens come closest to choosing another expert: the smallest
    relative gap (p_k - p_k+1) / p_k between the k-th and (k+1)-th router probability."""
    best = None
    for name, a in arrays.items():
        if name.endswith("/router_probs") and a.shape[-1] > k:
            p = np.sort(a.astype(np.float64), axis=-1)[:, ::-1]
            gap = (p[:, k - 1] - p[:, k]) / np.maximum(p[:, k - 1], 1e-300)
            t = int(gap.argmin())
            if best is None or gap[t] < best["relative_gap"]:
                best = {"relative_gap": float(gap[t]), "array": name, "token": t,
                        "probability": float(p[t, k - 1])}
    return best


def golden_arrays(params, cfg, tokens, layers=None, fingerprint: str | None = None) -> dict:
    """trace_arrays plus ``meta``: the whole content of a golden file, in file order."""
    arrays = trace_arrays(params, cfg, tokens, layers)
    from . import __version__
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "minigrok_version": __version__,
        "config": dataclasses.asdict(cfg),
        "checkpoint_fingerprint": fingerprint, "fingerprint_covers": FINGERPRINT_COVERS,
        "dtype": "float32", "ids_dtype": "int32",
        "computed_by": "minigrok float32 forward on NumPy: full sequence, no KV cache",
        "num_tokens": len(tokens),
        "layers": sorted({int(n[6:n.index("/")]) for n in arrays if n.startswith("layer_")}),
        "layer_stages": list(LAYER_STAGES), "shapes": SHAPES,
        "tolerances": {"relative_to": "max |expected| of each array",
                       "expert_ids": "exact; 'tie' is the relative probability gap under "
                                     "which a different expert counts as a near-tie",
                       **{p: {s: _tolerance(s, TOLERANCES[p]) for s in _FLOAT_STAGES}
                          | {"tie": TOLERANCES[p]["tie"]} for p in TOLERANCES}},
        "closest_routing": closest_routing(arrays, cfg.num_selected_experts),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


def fingerprint(root, cfg) -> str:
    """A cheap, stable fingerprint of a checkpoint (see FINGERPRINT_COVERS): hex sha256."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode() + b"\n")
    ckpt = Path(root) / CKPT_DIR
    for name in sorted(f for f in os.listdir(ckpt) if f.startswith("tensor")):
        path = ckpt / name
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(FINGERPRINT_BYTES)
            f.seek(max(0, size - FINGERPRINT_BYTES))
            tail = f.read(FINGERPRINT_BYTES)
        h.update(f"{name} {size} {hashlib.sha256(head).hexdigest()} "
                 f"{hashlib.sha256(tail).hexdigest()}\n".encode())
    return h.hexdigest()


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'A-B' (inclusive) or 'A' -> layer indices, checked against the model."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise MinigrokError(f"--layers must look like A-B or A (e.g. 0-3), got {text!r}")
    a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if a > b or b >= num_layers:
        raise MinigrokError(f"--layers {text}: need 0 <= A <= B < {num_layers} (the model's "
                            "layers)")
    return list(range(a, b + 1))


def make(checkpoint, tokens, layers: str | None = None) -> dict:
    """Open a checkpoint and compute the golden arrays for ``tokens``."""
    ck = open_checkpoint(checkpoint)
    cfg = ck.config
    tokens = check_tokens(tokens, cfg.vocab_size, cfg.sequence_len)
    chosen = None if layers is None else parse_layers(layers, cfg.num_layers)
    params = for_cpu(model_params(ck.params, cfg.num_layers))   # as minigrok.load does
    return golden_arrays(params, cfg, tokens, chosen, fingerprint(ck.root, cfg))


# -- the file ----------------------------------------------------------------------------

_DATE = (1980, 1, 1, 0, 0, 0)          # the earliest date a zip can hold: no clock in the file


def write(path, arrays: dict, force: bool = True) -> Path:
    """Write ``arrays`` as an .npz, byte-for-byte the same for the same arrays.

    np.savez stamps every entry with the current time; here each entry has a fixed date,
    fixed attributes and no compression, in the order given. Written by outputs.write_file
    (a temporary file renamed when complete), so a failure never leaves half a file. An
    existing ``path`` is replaced only with ``force`` (the command line's --force; this
    function's callers rewrite their own files) and only where it is an .npz file.
    """
    from . import outputs      # here, not at the top: only this function of the module writes

    def write_zip(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=_DATE)
                info.create_system = 3                    # "Unix", whatever writes it
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, buf.getvalue())

    return outputs.write_file(path, write_zip, force=force, recognise=outputs.is_npz,
                              what="an .npz file")


# -- reading: a file from anyone, bounded before anything is allocated ----------------------

# A golden file is often someone else's (a port's dump, a download), so every size is checked
# against these limits before it is decompressed or allocated (docs/golden-format.md, "Reading
# a file from anyone", says why these numbers).
MAX_ENTRY_BYTES = 1 << 30         # one array: the real model's logits or attn_probs, T <= 2048
MAX_TOTAL_BYTES = 4 << 30         # all arrays of a file, which read() holds at once
MAX_META_BYTES = 1 << 20          # the meta JSON (about 3 KiB in practice)
MAX_ENTRIES = 1 << 16             # a full real-model dump has 901
MAX_DIRECTORY_BYTES = 4 << 20     # the zip's central directory, ~10x that in Python objects
MAX_NPY_HEADER = 10000            # numpy's own default for np.load
MAX_NAME = 200
_CHUNK = 1 << 20
_META_DIMS = {"T": "num_tokens", "D": "emb_size", "H": "num_q_heads", "K": "num_kv_heads",
              "d": "key_size", "E": "num_experts", "k": "num_selected_experts", "V": "vocab_size"}


def _show(value) -> str:
    """ascii() of file content, cut to 200 characters: a message stays one short line."""
    text = ascii(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _gib(n: int) -> str:
    """A size for a message, exact; n may be any int a header claims (2^4000, say)."""
    return f"{n >> 30} GiB" if n and not n % (1 << 30) else f"{n >> 20} MiB" if n and not \
        n % (1 << 20) else f"{n:,} bytes" if n < 1 << 64 else "more than 2^64 bytes"


def _open_regular(path, shown):
    """The file and its size, opened only if it is a regular file (environment.open_regular:
    a FIFO is never waited on, and a directory or device has no size to bound)."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise MinigrokError(f"{shown}: no such file") from None
    except (OSError, ValueError) as e:
        raise MinigrokError(f"{shown}: cannot open ({getattr(e, 'strerror', 0) or e}), "
                            "not an .npz file") from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), os.fstat(fd).st_size


def _check_directory(f, size, shown):
    """Bound the zip's central directory before zipfile reads it whole and builds an object per
    entry. The end record is found where zipfile looks: the file's last 22 bytes, else the last
    signature in the final 64 KiB (a comment); a ZIP64 record sits 20 + 56 bytes before it."""
    n = min(size, (1 << 16) + 22 + 20 + 56)
    f.seek(size - n)
    tail = f.read(n)
    at = len(tail) - 22
    if not (at >= 0 and tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        at = tail.rfind(b"PK\x05\x06", max(0, len(tail) - 22 - (1 << 16)))
    if at < 0 or len(tail) - at < 22:
        raise MinigrokError(f"{shown}: not an .npz file (not a zip archive)")
    entries, directory = struct.unpack("<HL", tail[at + 10:at + 16])
    if at >= 76 and tail[at - 20:at - 16] == b"PK\x06\x07" and \
            tail[at - 76:at - 72] == b"PK\x06\x06":          # ZIP64: its counts replace these
        entries, directory = struct.unpack("<2Q", tail[at - 44:at - 28])
    if entries > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise MinigrokError(f"{shown}: its zip directory lists {entries} entries in "
                            f"{_gib(directory)}, more than the limits ({MAX_ENTRIES}, "
                            f"{_gib(MAX_DIRECTORY_BYTES)})")


def _check_entries(zf, shown) -> list:
    """(name, ZipInfo) per entry, refusing what is not plain arrays before decompressing any."""
    infos, out, total = zf.infolist(), {}, 0
    if len(infos) > MAX_ENTRIES:
        raise MinigrokError(f"{shown}: {len(infos)} entries, more than {MAX_ENTRIES}")
    for info in infos:
        where = f"{shown}: entry {_show(info.filename)}"
        name = info.filename[:-4]
        if not info.filename.endswith(".npy") or not 0 < len(name) <= MAX_NAME or \
                not all(" " <= c <= "~" for c in name):
            raise MinigrokError(f"{where} is not an array (NAME.npy, NAME printable ASCII of at "
                                f"most {MAX_NAME} characters)")
        if name in out:
            raise MinigrokError(f"{where} appears twice")
        if info.flag_bits & 0x1:
            raise MinigrokError(f"{where} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise MinigrokError(f"{where}: compression method {info.compress_type} is not "
                                "supported (only stored and deflate)")
        limit = (MAX_META_BYTES if name == "meta" else MAX_ENTRY_BYTES) + MAX_NPY_HEADER + 12
        if info.file_size > limit:
            raise MinigrokError(f"{where} declares {info.file_size} bytes uncompressed, more than "
                                f"the limit of {_gib(limit - MAX_NPY_HEADER - 12)} per array")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise MinigrokError(f"{where}: stored, but its sizes differ ({info.compress_size} "
                                f"and {info.file_size} bytes)")
        total += info.file_size
        out[name] = info
    if total > MAX_TOTAL_BYTES:
        raise MinigrokError(f"{shown}: its arrays declare {_gib(total)} uncompressed, more than "
                            f"the limit of {_gib(MAX_TOTAL_BYTES)} per file")
    # Entries that share compressed bytes are how a small zip unpacks to terabytes: each
    # entry's local header (30 bytes at least) and data must end before the next one starts.
    spans = sorted((i.header_offset, i.header_offset + 30 + i.compress_size, i.filename)
                   for i in infos) + [(zf.start_dir, 0, None)]
    for (_, end, name), (start, _, after) in zip(spans, spans[1:]):
        if end > start:
            raise MinigrokError(f"{shown}: entry {_show(name)} overlaps " + (
                "the zip directory" if after is None else f"entry {_show(after)}") +
                " (a zip bomb's trick, or a damaged file)")
    return list(out.items())


def _read_exact(f, n, where) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise MinigrokError(f"{where} is truncated")
    return data


def _check_dtype(name, dtype, where):
    stage = name.rsplit("/", 1)[-1]
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "iuf" or \
            (dtype.kind == "f" and dtype.itemsize > 8):
        raise MinigrokError(f"{where} has dtype {_show(dtype.str)}: golden arrays hold numbers "
                            "(integers or float16/32/64), not strings, objects or records")
    if name == "meta" and dtype != np.uint8:
        raise MinigrokError(f"{where} has dtype {dtype}; 'meta' is uint8 (UTF-8 JSON)")
    if (name == "tokens" or stage in ID_STAGES) and dtype.kind == "f":
        raise MinigrokError(f"{where} has dtype {dtype}; ids are integers")
    if _spec(name) and not (name == "tokens" or stage in ID_STAGES) and dtype.kind != "f":
        raise MinigrokError(f"{where} has dtype {dtype}; values are floats")


def _read_array(zf, name, info, where):
    """One .npy entry: its header checked (dtype, and the size it claims against the limits
    and the zip's declared size) before its data is allocated; the data counted as it comes."""
    with zf.open(info) as f:
        head = _read_exact(f, 10, where)
        if head[:6] != b"\x93NUMPY" or (head[6], head[7]) not in ((1, 0), (2, 0)):
            raise MinigrokError(f"{where} is not a .npy array of format version 1.0 or 2.0")
        length = head[8:] + (_read_exact(f, 2, where) if head[6] == 2 else b"")
        if (n := int.from_bytes(length, "little")) > MAX_NPY_HEADER:
            raise MinigrokError(f"{where}: its .npy header claims {n} bytes, more than "
                                f"{MAX_NPY_HEADER}")
        header = _read_exact(f, n, where)
        parse = np.lib.format.read_array_header_1_0 if head[6] == 1 else \
            np.lib.format.read_array_header_2_0
        try:                # numpy tokenizes and evaluates the (bounded) header text: any
            with warnings.catch_warnings():   # failure of it (TokenError, a deprecated dtype
                warnings.simplefilter("error")    # name's warning, ...) means a bad header
                shape, fortran, dtype = parse(io.BytesIO(length + header),
                                              max_header_size=MAX_NPY_HEADER)
        except Exception as e:
            raise MinigrokError(f"{where}: bad .npy header ({_show(str(e))})") from None
        _check_dtype(name, dtype, where)
        if len(shape) > 32 or any(int(n) < 0 for n in shape):
            raise MinigrokError(f"{where}: bad shape {_show(shape)} in its .npy header")
        nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
        limit = MAX_META_BYTES if name == "meta" else MAX_ENTRY_BYTES
        if nbytes > limit:
            raise MinigrokError(f"{where}: its header claims shape {_show(shape)} of {dtype}, "
                                f"{_gib(nbytes)}, more than the limit of {_gib(limit)}")
        if (n := 8 + len(length) + len(header) + nbytes) != info.file_size:
            raise MinigrokError(f"{where} holds {info.file_size} bytes, its .npy header says {n}")
        data, got = np.empty(nbytes, np.uint8), 0
        view = memoryview(data)
        while got < nbytes:               # counted: never more than the header claimed
            chunk = f.read(min(_CHUNK, nbytes - got))
            if not chunk:
                raise MinigrokError(f"{where} is truncated ({got} of {nbytes} bytes)")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        if f.read(1):                     # also makes zipfile check the CRC-32
            raise MinigrokError(f"{where} has more data than its header says")
    return data.view(dtype).reshape(tuple(int(n) for n in shape), order="F" if fortran else "C")


def _decode_meta(a, shown) -> object:
    if a.ndim != 1:
        raise MinigrokError(f"{shown}: 'meta' is not 1-D uint8 (UTF-8 JSON)")
    try:
        meta = json.loads(a.tobytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MinigrokError(f"{shown}: 'meta' is not UTF-8 JSON (byte {e.start} is not "
                            "UTF-8)") from None
    except RecursionError:
        raise MinigrokError(f"{shown}: 'meta' is not usable JSON (nested too deeply)") from None
    except ValueError as e:
        raise MinigrokError(f"{shown}: 'meta' is not UTF-8 JSON ({_show(str(e))})") from None
    tolerances = meta.get("tolerances") if isinstance(meta, dict) else None
    for profile in tolerances.values() if isinstance(tolerances, dict) else ():
        for stage, v in profile.items() if isinstance(profile, dict) else ():
            # compare() takes a number here as the tolerance (0 would mean "ids")
            if isinstance(v, bool) or (isinstance(v, (int, float)) and not 0 < v < math.inf):
                raise MinigrokError(f"{shown}: meta tolerance {_show(stage)} is {_show(v)}, "
                                    "not a positive number")
    return meta


def _spec(name):
    """The documented dimensions of an array (['T', 'H*d']), or None for other names."""
    m = re.fullmatch(r"layer_\d+/(\w+)", name)
    stage = m[1] if m and m[1] in LAYER_STAGES else name if name in _TOP else None
    return SHAPES[stage].split("]")[0][1:].split(", ") if stage else None


def _check_consistent(arrays, meta, shown):
    """Shapes that fit the documented table and each other (T, D, ... the same everywhere, as
    in meta's config when the file is minigrok's), ids inside their range."""
    known = {}
    minigroks = isinstance(meta, dict) and meta.get("format") == FORMAT
    if minigroks and isinstance(config := meta.get("config"), dict):
        for letter, key in _META_DIMS.items():
            v = meta.get(key) if letter == "T" else config.get(key)
            if type(v) is int:
                known[letter] = (v, f"meta {key}")
    composite = []
    for name in sorted(set(arrays) - {"meta"}, key=model_order):
        spec, shape = _spec(name), arrays[name].shape
        if spec is None:
            continue
        if len(shape) != len(spec):
            raise MinigrokError(f"{shown}: {name} has shape {list(shape)}; the format says "
                                f"[{', '.join(spec)}]")
        for letter, n in zip(spec, shape):
            if "*" in letter:
                composite.append((name, letter, n))
                continue
            v, source = known.setdefault(letter, (n, name))
            if v != n:
                raise MinigrokError(f"{shown}: {name} has shape {list(shape)} "
                                    f"([{', '.join(spec)}]), but {letter} is {_show(v)} in "
                                    f"{source}")
    for name, letter, n in composite:
        a, b = letter.split("*")
        if a in known and b in known and known[a][0] * known[b][0] != n:
            raise MinigrokError(f"{shown}: {name} has {n} columns, not {letter} (from "
                                f"{known[a][1]} and {known[b][1]})")
    for name in [n for n in arrays if n == "tokens" or n.endswith("/expert_ids") and _spec(n)]:
        a, (top, source) = arrays[name], known.get("V" if name == "tokens" else "E", (None, ""))
        bad = a[(a < 0) | (a >= top)] if type(top) is int else a[a < 0]
        if bad.size:
            raise MinigrokError(f"{shown}: {name} holds {bad.flat[0]}, outside [0, "
                                f"{'...' if top is None else _show(top)}) ({source or 'ids'})")


def read(path) -> dict:
    """{name: array} of an .npz in its entry order (``meta`` decoded), checked against the
    documented format and the limits above: anything else is one MinigrokError."""
    path = Path(path)
    shown = str(path) if str(path).isprintable() else ascii(str(path))
    f, size = _open_regular(path, shown)
    arrays, name = {}, None
    try:
        with f:
            _check_directory(f, size, shown)
            with zipfile.ZipFile(f) as zf:
                for name, info in _check_entries(zf, shown):
                    arrays[name] = _read_array(zf, name, info, f"{shown}: entry {name}")
    except MemoryError:
        raise MinigrokError(f"{shown}: not enough memory to read its arrays") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
            NotImplementedError, RuntimeError) as e:
        raise MinigrokError(f"{shown}: " + (f"entry {name} is damaged" if name else "not a "
                            "readable .npz file") + f" ({_show(str(e))})") from None
    if "meta" in arrays:
        arrays["meta"] = _decode_meta(arrays["meta"], shown)
    _check_consistent(arrays, arrays.get("meta"), shown)
    return arrays


# -- comparing ---------------------------------------------------------------------------

_TOP = {"tokens": 0, "embeddings": 1, "final_norm": 3, "logits": 4}
_STAGE_RANK = {s: i for i, s in enumerate(LAYER_STAGES)}


def model_order(name: str):
    """Sort key: tokens, embeddings, layer 0's stages, layer 1's, ..., final_norm, logits."""
    m = re.fullmatch(r"layer_(\d+)/(.+)", name)
    if m:
        return (2, int(m[1]), _STAGE_RANK.get(m[2], len(LAYER_STAGES)), m[2])
    return (_TOP[name],) if name in _TOP else (5, 0, 0, name)


_FLOAT_STAGES = ("embeddings",) + tuple(s for s in LAYER_STAGES if s not in ID_STAGES) + \
    ("final_norm", "logits")


def _tolerance(name: str, tolerances: dict) -> float:
    """The tolerance for an array (0.0: compared exactly)."""
    stage = name.rsplit("/", 1)[-1]
    if name == "tokens" or stage in ID_STAGES:
        return 0.0
    return tolerances.get(stage, tolerances["default"])


def compare(expected: dict, actual: dict, profile: str = "float32") -> list[dict]:
    """One row per array both files hold, in model order.

    Each row: name, shape, scale (max |expected|), err (max |difference|), rel (err / scale;
    for ids and tokens the fraction of entries that differ), tol, status ('ok', 'FAIL' or
    'tie': expert ids that differ only where the expected router probabilities of the two
    experts are within the tie tolerance) and note.
    """
    if profile not in TOLERANCES:
        raise MinigrokError(f"unknown tolerance profile {profile!r}; choose one of "
                            f"{', '.join(TOLERANCES)}")
    meta = expected.get("meta")
    if isinstance(meta, np.ndarray):                      # as golden_arrays returns it
        meta = json.loads(meta.tobytes().decode())
    tol = TOLERANCES[profile]
    stored = meta.get("tolerances") if isinstance(meta, dict) else None
    stored = stored.get(profile) if isinstance(stored, dict) else None
    if isinstance(stored, dict):                          # read() refuses bad ones from files
        tol = {**tol, **{k: v for k, v in stored.items() if not isinstance(v, bool)
                         and isinstance(v, (int, float)) and 0 < v < math.inf}}
    names = sorted((set(expected) & set(actual)) - {"meta"}, key=model_order)
    rows = []
    for name in names:
        e, a = np.asarray(expected[name]), np.asarray(actual[name])
        row = {"name": name, "shape": list(e.shape), "scale": None, "err": None, "rel": None,
               "tol": _tolerance(name, tol), "status": "ok", "note": ""}
        if e.shape != a.shape:
            row.update(status="FAIL", note=f"shape {list(a.shape)}, expected {list(e.shape)}")
        elif row["tol"] == 0.0:
            _compare_ids(row, e, a, expected, tol["tie"])
        else:
            _compare_values(row, e, a)
        rows.append(row)
    return rows


def _compare_values(row, e, a, chunk=1 << 22):
    """In float64, a chunk at a time (a 1 GiB array would need 8 GiB at once). A NaN on
    either side fails; equal infinities match; the scale is the largest *finite* |expected|
    (an infinity there would excuse any error)."""
    shape, e, a = e.shape, e.reshape(-1), a.reshape(-1)
    scale, err, worst, nan = 0.0, 0.0, 0, None
    for i in range(0, e.size, chunk):
        ec, ac = e[i:i + chunk].astype(np.float64), a[i:i + chunk].astype(np.float64)
        isnan = np.isnan(ec) | np.isnan(ac)
        if nan is None and isnan.any():
            j = int(isnan.argmax())
            nan = ("expected" if np.isnan(ec[j]) else "actual", i + j)
        finite = np.abs(ec[np.isfinite(ec)])
        scale = max(scale, float(finite.max()) if finite.size else 0.0)
        with np.errstate(invalid="ignore"):
            diff = np.where(ec == ac, 0.0, np.abs(ac - ec))
        diff[np.isnan(diff)] = np.inf
        j = int(diff.argmax()) if diff.size else 0
        if diff.size and diff[j] > err:
            err, worst = float(diff[j]), i + j
    rel = err / scale if scale > 0 else err
    row.update(scale=scale, err=err, rel=rel)
    if nan is not None or not rel <= row["tol"]:
        at = list(map(int, np.unravel_index(worst if nan is None else nan[1], shape)))
        row.update(status="FAIL", note=f"NaN in {nan[0]} at {at}" if nan else f"worst at {at}")


def _compare_ids(row, e, a, expected, tie):
    bad = e.astype(np.int64) != a.astype(np.float64) if a.dtype.kind == "f" else \
        e.astype(np.int64) != a.astype(np.int64)
    row.update(err=float(bad.sum()), rel=float(bad.mean()) if bad.size else 0.0)
    if not bad.any():
        return
    probs = expected.get(row["name"].rsplit("/", 1)[0] + "/router_probs")
    probs = None if probs is None else np.asarray(probs)
    fits = probs is not None and probs.ndim == e.ndim == 2 and len(probs) == len(e) and \
        e.min() >= 0 and e.max() < probs.shape[-1]      # else no near-tie can be told
    if row["name"] == "tokens" or not fits:
        row.update(status="FAIL", note=f"first difference at {list(map(int, np.argwhere(bad)[0]))}")
        return
    ties = []
    for t, slot in np.argwhere(bad):
        got = int(a[t, slot]) if 0 <= a[t, slot] < probs.shape[-1] else None
        pe, pa = (None, None) if got is None else (float(probs[t, e[t, slot]]),
                                                   float(probs[t, got]))
        gap = None if got is None else abs(pe - pa) / max(pe, pa, 1e-30)
        ties.append(gap is not None and gap <= tie)
        if not ties[-1]:
            row.update(status="FAIL", note=f"token {t}, slot {slot}: expert {a[t, slot]}, "
                       f"expected {e[t, slot]}" + ("" if gap is None else
                                                  f" (relative probability gap {gap:.2g})"))
            return
    row.update(status="tie", note=f"{int(bad.any(axis=-1).sum())} token(s) differ only at "
               f"near-ties (relative gap <= {tie:g}): later stages may differ too")


def first_failure(rows):
    return next((r for r in rows if r["status"] == "FAIL"), None)


def describe(row) -> str:
    """'layer_03/q: relative error 2.1e-02 > tolerance 1e-04 (...)' for a failing row."""
    if row["err"] is None:
        return f"{row['name']}: {row['note']}"
    if row["tol"] == 0.0:
        return f"{row['name']}: {int(row['err'])} of {int(np.prod(row['shape']))} entries " \
               f"differ ({row['note']})"
    return (f"{row['name']}: relative error {row['rel']:.3g} > tolerance {row['tol']:g} "
            f"(max abs error {row['err']:.3g}, max |expected| {row['scale']:.3g}, "
            f"{row['note']})")


def table(rows) -> str:
    head = ("array", "shape", "max|expected|", "max abs err", "rel err", "tolerance", "result")
    lines = [head]
    for r in rows:
        ids = r["tol"] == 0.0 and r["err"] is not None
        lines.append((r["name"], "[" + ", ".join(map(str, r["shape"])) + "]",
                      "-" if r["scale"] is None else f"{r['scale']:.4g}",
                      "-" if r["err"] is None else (f"{int(r['err'])} differ" if ids
                                                    else f"{r['err']:.3g}"),
                      "-" if r["rel"] is None else f"{r['rel']:.3g}",
                      "exact" if r["tol"] == 0.0 else f"{r['tol']:g}",
                      r["status"] + (f"  {r['note']}" if r["status"] != "ok" else "")))
    widths = [max(len(line[c]) for line in lines) for c in range(len(head) - 1)]
    return "\n".join("  ".join(f"{v:<{w}}" for v, w in zip(line, widths)) + "  " + line[-1]
                     for line in lines)


def verify(path, checkpoint) -> tuple[bool, str]:
    """Recompute a golden file from a checkpoint: (within tolerance?, one-line verdict)."""
    stored = read(path)
    meta = stored.get("meta")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MinigrokError(f"{path}: not a minigrok golden file (no '{FORMAT}' meta entry)")
    if "tokens" not in stored or stored["tokens"].ndim != 1:
        raise MinigrokError(f"{path}: no 1-D 'tokens' array")
    ck = open_checkpoint(checkpoint)
    cfg = ck.config
    layers = sorted({int(m[1]) for n in stored if (m := re.match(r"layer_(\d+)/", n))})
    if any(i >= cfg.num_layers for i in layers):
        raise MinigrokError(f"{path}: has layer {layers[-1]}, the checkpoint only "
                            f"{cfg.num_layers} layers")
    T, D, H, d = len(stored["tokens"]), cfg.emb_size, cfg.num_q_heads, cfg.key_size
    need = 4 * T * ((len(layers) + 1) * (7 * D + 4 * H * d + H * T + 4 * cfg.num_experts)
                    + cfg.vocab_size)              # the recomputed arrays, one layer's scratch
    if T > cfg.sequence_len or need > MAX_TOTAL_BYTES:
        raise MinigrokError(f"{path}: {T} tokens; recomputing them would hold {_gib(need)} of "
                            f"arrays (limits: {cfg.sequence_len} tokens, "
                            f"{_gib(MAX_TOTAL_BYTES)})")
    tokens = check_tokens(stored["tokens"].tolist(), cfg.vocab_size)
    fresh = trace_arrays(for_cpu(model_params(ck.params, cfg.num_layers)), cfg, tokens,
                         layers)
    rows = compare(stored, fresh, "float32")          # with the tolerances the file records
    missing = sorted(set(fresh) - set(stored), key=model_order)
    same_ck = meta.get("checkpoint_fingerprint") == fingerprint(ck.root, cfg)
    hint = "" if same_ck else " (the file was made from a different checkpoint: its " \
                              "fingerprint differs)"
    bad = first_failure(rows)
    if bad is not None:
        return False, f"{path}: first divergence at {describe(bad)}{hint}"
    if missing:
        return False, f"{path}: lacks {missing[0]}" + \
            (f" and {len(missing) - 1} more arrays" if len(missing) > 1 else "")
    worst = max((r for r in rows if r["tol"]), key=lambda r: r["rel"] / r["tol"])
    return True, (f"{path}: ok, {len(rows)} arrays within tolerance (largest relative error "
                  f"{worst['rel']:.3g} at {worst['name']}, tolerance {worst['tol']:g})" + hint)
