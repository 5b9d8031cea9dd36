"""The Grok-1 checkpoint on disk: which file holds which parameter, and opening it safely.

A checkpoint is a folder ``ckpt-0/`` of files ``tensor{i:05d}_000``, one per parameter. The
index i is the parameter's position when JAX flattens the parameter dict, and JAX flattens a
dict in sorted key order. Sorting *strings* puts ``decoder_layer_10`` before
``decoder_layer_2``, so the files hold the layers in the order 0, 1, 10, 11, ..., 19, 2,
20, ...: a loader that assumes numeric order silently scrambles every layer from 2 on.
minigrok derives the order from that rule (``sorted(names)``), for any number of layers.

Opening reads only each file's pickle header (through ``safepickle``, which never runs
anything from the file); the arrays are read-only memory maps, so a 318 GB checkpoint opens
in seconds and only the pages a computation touches are ever read.
"""

import math
import os
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..environment import file_kind
from ..errors import CheckpointError, MinigrokError
from ..reference.config import CONFIG_FILE, ROW_BLOCKS, Config, load_config
from ..reference.quant import QuantizedWeight8bit
from . import safepickle

CKPT_DIR = "ckpt-0"
EMBEDDINGS = "language_model/in_out_embed/embeddings"
FINAL_NORM = "language_model/rms_norm/scale"


def tensor_file(index: int) -> str:
    """The file name of tensor ``index`` (the suffix is the host shard, always 000 here)."""
    return f"tensor{index:05d}_000"


def layer_prefix(layer: int) -> str:
    return f"transformer/decoder_layer_{layer}/"


class TensorSpec(NamedTuple):
    """What one checkpoint file must hold.

    dtype is 'float32' for plain arrays, 'int8' for a QuantizedWeight8bit whose bf16 scales
    have shape ``scales``.
    """

    name: str
    shape: tuple
    dtype: str
    scales: tuple | None = None


def layer_specs(cfg: Config, layer: int) -> list[TensorSpec]:
    """The 12 tensors of one decoder layer (names as the official Haiku modules create them)."""
    D, E, F = cfg.emb_size, cfg.num_experts, cfg.ffn_size
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    p = layer_prefix(layer)
    attn = p + "multi_head_attention/"
    specs = [
        TensorSpec(p + "moe/linear/w", (E, D, F), "int8", (E, 1, F)),
        TensorSpec(p + "moe/linear_v/w", (E, D, F), "int8", (E, 1, F)),
        TensorSpec(p + "moe/linear_1/w", (E, F, D), "int8", (E, ROW_BLOCKS, D)),
        TensorSpec(attn + "query/w", (D, q), "int8", (1, q)),
        TensorSpec(attn + "key/w", (D, kv), "int8", (1, kv)),
        TensorSpec(attn + "value/w", (D, kv), "int8", (1, kv)),
        TensorSpec(attn + "linear/w", (q, D), "int8", (ROW_BLOCKS, D)),
        TensorSpec(p + "router/w", (D, E), "float32"),
    ]
    specs += [TensorSpec(p + f"{norm}/scale", (D,), "float32")
              for norm in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")]
    return specs


def tensor_specs(cfg: Config) -> list[TensorSpec]:
    """Every tensor of the model, in file order: index i is ``tensor_file(i)``."""
    specs = [TensorSpec(EMBEDDINGS, (cfg.vocab_size, cfg.emb_size), "float32"),
             TensorSpec(FINAL_NORM, (cfg.emb_size,), "float32")]
    for layer in range(cfg.num_layers):
        specs += layer_specs(cfg, layer)
    return sorted(specs, key=lambda s: s.name)                  # JAX's tree-flatten order


def find_root(path) -> Path:
    """The folder holding ``ckpt-0/`` (and config.json), given it or ``ckpt-0/`` itself."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / CKPT_DIR).is_dir():
        return path
    if path.name == CKPT_DIR:
        return path.parent
    raise CheckpointError(f"{path}: not a checkpoint (expected a {CKPT_DIR}/ folder of "
                          f"tensor00000_000 ... files inside it)")


def _describe(obj) -> tuple[str, tuple, tuple | None]:
    """(dtype, shape, scales shape) of what a file held, in TensorSpec's terms."""
    if isinstance(obj, QuantizedWeight8bit):
        w, s = obj.weight, obj.scales
        kind = "int8" if w.dtype == np.int8 and _is_bf16(s) else \
            f"QuantizedWeight8bit({w.dtype}, {_dtype_name(s)})"
        return kind, tuple(w.shape), tuple(s.shape)
    return _dtype_name(obj), tuple(obj.shape), None


def _is_bf16(a) -> bool:
    return (a.dtype.metadata or {}).get("format") == "bfloat16"


def _dtype_name(a) -> str:
    return "bfloat16" if _is_bf16(a) else str(a.dtype)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check(specs, tensors) -> list[str]:
    """Every way the loaded tensors differ from the specs, as 'file (name): problem' lines."""
    problems = []
    for i, (spec, obj) in enumerate(zip(specs, tensors)):
        dtype, shape, scales = _describe(obj)
        want = (spec.dtype, spec.shape, spec.scales)
        if (dtype, shape, scales) != want:
            got = f"{dtype} {_fmt(shape)}" + (f" scales {_fmt(scales)}" if scales else "")
            exp = f"{spec.dtype} {_fmt(spec.shape)}" + \
                (f" scales {_fmt(spec.scales)}" if spec.scales else "")
            problems.append(f"{tensor_file(i)} ({spec.name}): expected {exp}, got {got}")
    return problems


class Checkpoint(NamedTuple):
    """An opened checkpoint: its config and {official name: array or QuantizedWeight8bit}."""

    root: Path
    config: Config
    params: dict
    specs: list


def open_checkpoint(path) -> Checkpoint:
    """Open and fully check a checkpoint; raises CheckpointError naming the first bad file.

    Every file must be present, parse safely and have the shape and dtype the config
    implies; a shape mismatch lists all mismatching tensors at once.
    """
    root = find_root(path)
    try:
        cfg = load_config(root)
    except MinigrokError as e:
        raise CheckpointError(str(e)) from None
    specs = tensor_specs(cfg)
    ckpt = root / CKPT_DIR
    expected = [tensor_file(i) for i in range(len(specs))]
    problems, to_fetch = download_problems(ckpt, specs)
    if len(problems) > MAX_LISTED:     # one line a reader can take in, whatever the count
        problems = problems[:MAX_LISTED - 1] + [f"and {len(problems) - MAX_LISTED + 1} more"]
    if problems:
        where = f"config {root / CONFIG_FILE}" if (root / CONFIG_FILE).exists() else \
            "no config.json: assuming the full Grok-1 config"
        fetch = f"; re-fetch just the missing and short files, {human_bytes(to_fetch)} at least" \
            if to_fetch else ""
        raise CheckpointError(f"{'; '.join(problems)} ({len(specs)} tensor files expected for "
                              f"{cfg.num_layers} layers, {where}{fetch})")
    tensors = [safepickle.load(ckpt / f) for f in expected]
    problems = check(specs, tensors)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    params = {spec.name: t for spec, t in zip(specs, tensors)}
    return Checkpoint(root, cfg, params, specs)


def tensor_bytes(spec: TensorSpec) -> int:
    """Bytes of one tensor's arrays: int8 weight and bf16 scales, or float32."""
    if spec.scales:
        return math.prod(spec.shape) + 2 * math.prod(spec.scales)
    return 4 * math.prod(spec.shape)


def layer_bytes(cfg: Config) -> int:
    """Bytes of one decoder layer's weights: int8 and their scales, the router and norms."""
    return sum(tensor_bytes(spec) for spec in layer_specs(cfg, 0))


MAX_LISTED = 12     # problems named in open_checkpoint's message; the rest are counted


def download_problems(ckpt: Path, specs) -> tuple[list[str], int]:
    """Every way ``ckpt``'s files differ from a complete download, one 'file: problem' each:
    missing files (with the bytes their arrays take), short ones (smaller than their arrays'
    bytes alone and cut off: a transfer that stopped), ones that are no regular file (a FIFO,
    a device, a dangling link: reading them would hang or never end) and unexpected ones;
    and the bytes the missing and short files hold at least. Reads sizes, and the opcodes of
    files too small, so that a partial download is named in one message before any file is
    loaded."""
    expected = {tensor_file(i): spec for i, spec in enumerate(specs)}
    try:
        present = {e.name: e for e in os.scandir(ckpt) if e.name.startswith("tensor")}
    except OSError as e:
        raise CheckpointError(f"{ckpt}: cannot list: {e.strerror or e}") from None
    problems, to_fetch = [], 0
    for name, spec in expected.items():
        need = tensor_bytes(spec)
        if name not in present:
            problems.append(f"{name}: missing ({human_bytes(need)})")
            to_fetch += need
            continue
        try:
            st = present[name].stat()                       # through a link, as open does
        except OSError as e:
            problems.append(f"{name}: cannot read: {e.strerror or e}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{name}: not a regular file ({file_kind(st.st_mode)})")
            continue
        size = st.st_size
        # Smaller than its arrays and cut off mid-pickle: a transfer that stopped. (A whole
        # pickle of another tensor is left to the shape check, which names both.)
        if size < need and safepickle.survey(ckpt / name)["holds"].startswith(
                "unreadable: truncated"):
            problems.append(f"{name}: short: {size:,} bytes, its arrays alone take {need:,}")
            to_fetch += need
    problems += [f"{name}: unexpected file" for name in sorted(set(present) - set(expected))]
    return problems, to_fetch


def structure(path) -> list[dict]:
    """The distinct layouts of a checkpoint's tensor files, without reading their arrays: what
    to look at first on a new download, and to paste into a bug report when a file does not
    load. One dict per layout (protocol, globals, what the files hold), most files first:
    {"protocol", "globals", "holds", "files": [names], "payload_bytes" (all its files'
    arrays), "smallest", "largest" (file bytes)}. Works on any folder of tensor files,
    whatever config.json says."""
    ckpt = find_root(path) / CKPT_DIR
    try:
        names = sorted(e.name for e in os.scandir(ckpt) if e.name.startswith("tensor"))
    except OSError as e:
        raise CheckpointError(f"{ckpt}: cannot list: {e.strerror or e}") from None
    layouts = {}
    for name in names:
        s = safepickle.survey(ckpt / name)
        key = (s["protocol"], tuple(s["globals"]), s["holds"])
        layout = layouts.setdefault(key, {"protocol": s["protocol"], "globals": s["globals"],
                                          "holds": s["holds"], "files": [], "payload_bytes": 0,
                                          "smallest": s["file_bytes"], "largest": 0})
        layout["files"].append(name)
        layout["payload_bytes"] += s["payload_bytes"]
        layout["smallest"] = min(layout["smallest"], s["file_bytes"])
        layout["largest"] = max(layout["largest"], s["file_bytes"])
    return sorted(layouts.values(), key=lambda layout: -len(layout["files"]))


def human_bytes(n: float) -> str:
    """A byte count for people: '512 B', '33.3 KB', '1.6 GB' (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def active_int8_bytes(cfg: Config) -> int:
    """int8 weight bytes one token reads: attention plus the top-k experts of every layer."""
    per_layer = 0
    for spec in layer_specs(cfg, 0):
        if spec.scales:                       # the int8 matrices; a token reads k of E experts
            n = math.prod(spec.shape)
            if "/moe/" in spec.name:
                n = n * cfg.num_selected_experts // cfg.num_experts
            per_layer += n
    return cfg.num_layers * per_layer


def inspect_rows(ck: Checkpoint):
    """One row per file: (index, file, name, dtype, shape, scales shape, bytes on disk)."""
    ckpt = ck.root / CKPT_DIR
    for i, spec in enumerate(ck.specs):
        f = tensor_file(i)
        yield (i, f, spec.name, "int8+bf16" if spec.scales else spec.dtype,
               _fmt(spec.shape), _fmt(spec.scales) if spec.scales else "-",
               (ckpt / f).stat().st_size)


# -- the parameter tree the reference model takes ----------------------------------------------

def layer_params(flat: dict, index: int) -> dict:
    """Layer ``index``'s parameters, nested by their official names under the layer.

    {"multi_head_attention": {"query", "key", "value", "linear"}, "moe": {"linear",
    "linear_v", "linear_1"}, "router", "rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"}
    """
    prefix = layer_prefix(index)
    layer = {"multi_head_attention": {}, "moe": {}}
    for name, value in flat.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")[:-1]              # drop the trailing w / scale
        if len(parts) == 2:
            layer[parts[0]][parts[1]] = value
        else:
            layer[parts[0]] = value
    return layer


def model_params(flat: dict, num_layers: int) -> dict:
    """Checkpoint dict {official name: tensor} -> {"in_out_embed", "rms_norm", "layers": [...]}."""
    return {"in_out_embed": flat[EMBEDDINGS], "rms_norm": flat[FINAL_NORM],
            "layers": [layer_params(flat, i) for i in range(num_layers)]}

