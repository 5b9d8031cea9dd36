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
from pathlib import Path
from typing import NamedTuple

import numpy as np

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
    present = {f for f in os.listdir(ckpt) if f.startswith("tensor")}
    expected = [tensor_file(i) for i in range(len(specs))]
    missing = [f for f in expected if f not in present]
    extra = sorted(present - set(expected))
    where = f"(config {root / CONFIG_FILE})" if (root / CONFIG_FILE).exists() else \
        "(no config.json: assuming the full Grok-1 config)"
    if missing:
        raise CheckpointError(f"{missing[0]}: missing; {len(present)} tensor files found, "
                              f"{len(specs)} expected for {cfg.num_layers} layers {where}")
    if extra:
        raise CheckpointError(f"{extra[0]}: unexpected file; only {len(specs)} tensor files "
                              f"expected for {cfg.num_layers} layers {where}")
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

