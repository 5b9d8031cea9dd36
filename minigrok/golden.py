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
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .engine.runtime import for_cpu
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
    tokens = check_tokens(tokens, cfg.vocab_size)
    chosen = None if layers is None else parse_layers(layers, cfg.num_layers)
    params = for_cpu(model_params(ck.params, cfg.num_layers))   # as minigrok.load does
    return golden_arrays(params, cfg, tokens, chosen, fingerprint(ck.root, cfg))


# -- the file ----------------------------------------------------------------------------

_DATE = (1980, 1, 1, 0, 0, 0)          # the earliest date a zip can hold: no clock in the file


def write(path, arrays: dict) -> Path:
    """Write ``arrays`` as an .npz, byte-for-byte the same for the same arrays.

    np.savez stamps every entry with the current time; here each entry has a fixed date,
    fixed attributes and no compression, in the order given. Written to a temporary file
    and renamed, so a failure never leaves half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=_DATE)
                info.create_system = 3                    # "Unix", whatever writes it
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, buf.getvalue())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MinigrokError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read(path) -> dict:
    """{name: array} of an .npz in its entry order (``meta`` decoded to a dict)."""
    path = Path(path)
    if not path.is_file():
        raise MinigrokError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise MinigrokError(f"{path}: not an .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise MinigrokError(f"{path}: not a readable .npz file ({e})") from None
    if "meta" in arrays:
        try:
            arrays["meta"] = json.loads(arrays["meta"].tobytes().decode())
        except ValueError:
            raise MinigrokError(f"{path}: 'meta' is not UTF-8 JSON") from None
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
    if isinstance(meta, dict) and isinstance(meta.get("tolerances", {}).get(profile), dict):
        tol = {**tol, **{k: v for k, v in meta["tolerances"][profile].items()
                         if isinstance(v, (int, float))}}
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


def _compare_values(row, e, a):
    e, a = e.astype(np.float64), a.astype(np.float64)
    scale = float(np.abs(e).max()) if e.size else 0.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
    same_nonfinite = (e == a) | (np.isnan(e) & np.isnan(a))
    diff = np.where(same_nonfinite, 0.0, diff)
    err = float(diff.max()) if diff.size else 0.0
    if np.isnan(err):
        err = float("inf")
    rel = err / scale if scale > 0 else err
    row.update(scale=scale, err=err, rel=rel)
    if not rel <= row["tol"]:
        where = np.unravel_index(int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff))),
                                 diff.shape) if diff.size else ()
        row.update(status="FAIL", note=f"worst at {list(map(int, where))}")


def _compare_ids(row, e, a, expected, tie):
    bad = e.astype(np.int64) != a.astype(np.float64) if a.dtype.kind == "f" else \
        e.astype(np.int64) != a.astype(np.int64)
    row.update(err=float(bad.sum()), rel=float(bad.mean()) if bad.size else 0.0)
    if not bad.any():
        return
    probs = expected.get(row["name"].rsplit("/", 1)[0] + "/router_probs")
    if row["name"] == "tokens" or probs is None:
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
    tokens = check_tokens(stored["tokens"].tolist(), cfg.vocab_size)
    layers = sorted({int(m[1]) for n in stored if (m := re.match(r"layer_(\d+)/", n))})
    if any(i >= cfg.num_layers for i in layers):
        raise MinigrokError(f"{path}: has layer {layers[-1]}, the checkpoint only "
                            f"{cfg.num_layers} layers")
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
