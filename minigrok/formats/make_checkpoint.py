"""Write a random checkpoint in exactly the official on-disk format.

The real 318 GB checkpoint is just a bigger instance of what this writes: the same file
names and order, protocol-4 pickles of float32 arrays and ``__main__.QuantizedWeight8bit``
objects with int8 weights and bfloat16 scales (row-block scales where the official weights
have them), plus a ``config.json`` with the official field names. The weights are random
normals quantised by absmax per column (per row block and column for the row-parallel
weights), so everything that reads a checkpoint can be tested without the download.

Every tensor draws from its own generator seeded by (seed, crc32(name)): the same seed
gives the same bytes, and layer k is the same whatever --num-layers says. Tensors are made
and written a slice at a time, several files at once (up to 8, one per core): a full-width
Grok-1 layer takes 89 s and 1.7 GB of memory on 2 cores (144 s and 1.3 GB one file at a time).
"""

import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..environment import num_threads
from ..outputs import replace_dir
from ..reference.config import CONFIG_FILE, Config, to_json
from ..reference.quant import quantize
from . import pickle_writer
from .checkpoint import CKPT_DIR, tensor_file, tensor_specs

_COLUMNS = 2048          # columns of one expert quantised at a time (fixes the random stream)
_ROWS = 8192             # rows of a float32 tensor written at a time
_TENSOR_FILE = re.compile(r"tensor\d{5}_\d{3}")


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# How the random weights are spread. Activations stay O(1) through the stack, and each layer
# adds a small update to the residual stream (post-norms rms_norm_1 / rms_norm_3 centred at
# 0.1, as a trained model's residual stream is dominated by its accumulated updates rather
# than by any one layer). Why it matters: top-2 routing is discontinuous, and the official
# code computes in bfloat16, so a token whose 2nd and 3rd experts nearly tie can switch
# expert there and not here. With full-size post-norms one such switch moved the logits of
# every later position by 10-40% on random weights; with these values the official and
# minigrok logits of the tiny preset agree to ~0.5% (measured, see README). make_checkpoint's
# ``post_norm`` sets another centre (the oracle's "lively" checkpoint uses 1.0).
POST_NORM = 0.1
# Bump whenever the random recipe above changes the bytes a seed produces: cached checkpoints
# (the built-in default) are keyed by it, so an old cache is never mistaken for the new one.
RECIPE = 2


def _std(name: str, shape, post_norm: float) -> float:
    if name.endswith("/embeddings"):
        return 1 / math.sqrt(shape[1])       # x embedding_multiplier_scale = sqrt(D) -> unit rms
    if name.endswith("router/w"):
        return 4 / math.sqrt(shape[0])       # router logits ~ N(0, 4^2): decisive choices
    if name.endswith("/scale"):
        return 0.02 * _mean(name, post_norm)  # norm scales: their centre +- 2%
    return 1 / math.sqrt(shape[-2])          # fan-in init for every linear map


def _mean(name: str, post_norm: float) -> float:
    if name.endswith(("rms_norm_1/scale", "rms_norm_3/scale")):
        return post_norm
    return 1.0 if name.endswith("/scale") else 0.0


def _float_writer(spec, seed, post_norm: float):
    """Payload writer for a float32 tensor, generated ``_ROWS`` rows at a time."""
    def write(f):
        rng, std = _rng(seed, spec.name), _std(spec.name, spec.shape, post_norm)
        rows = spec.shape[0]
        for r0 in range(0, rows, _ROWS):
            shape = (min(_ROWS, rows - r0),) + spec.shape[1:]
            x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            x += np.float32(_mean(spec.name, post_norm))
            f.write(x.tobytes())
    return write


def _quantized_writers(spec, seed):
    """Payload writers for a QuantizedWeight8bit: weight first (it fills in the scales)."""
    E, n_in, n_out = (1,) + spec.shape if len(spec.shape) == 2 else spec.shape
    blocks = spec.scales[-2]
    scales = np.zeros((E, blocks, n_out), dtype=np.uint16)

    def write_weight(f):
        rng, std = _rng(seed, spec.name), np.float32(_std(spec.name, spec.shape, POST_NORM))
        for e in range(E):
            q = np.empty((n_in, n_out), dtype=np.int8)
            for c0 in range(0, n_out, _COLUMNS):
                c1 = min(c0 + _COLUMNS, n_out)
                w = rng.standard_normal((n_in, c1 - c0), dtype=np.float32) * std
                q[:, c0:c1], scales[e, :, c0:c1] = quantize(w, blocks)
            f.write(q.tobytes())

    def write_scales(f):
        f.write(scales.tobytes())

    return write_weight, write_scales


def write_tensor(path: Path, spec, seed: int, post_norm: float = POST_NORM):
    """Write one tensor file (``spec`` from checkpoint.tensor_specs)."""
    if spec.scales is None:
        value = pickle_writer.array_value(spec.shape, np.float32,
                                          _float_writer(spec, seed, post_norm))
    else:
        write_weight, write_scales = _quantized_writers(spec, seed)
        value = pickle_writer.quantized_value(
            pickle_writer.array_value(spec.shape, np.int8, write_weight),
            pickle_writer.array_value(spec.scales, np.uint16, write_scales, bfloat16=True))
    with open(path, "wb") as f:
        pickle_writer.dump(value, f)


def written_by_minigrok(path) -> bool:
    """Whether folder ``path`` holds exactly what make_checkpoint writes: ``config.json`` and
    ``ckpt-0/`` of tensor files, nothing else and no links. Only such a folder is replaced
    by --force: a download (no config.json) or a folder of other things never is."""
    with os.scandir(path) as it:
        entries = {e.name: e for e in it}
    if set(entries) != {CKPT_DIR, CONFIG_FILE}:
        return False
    if not (entries[CONFIG_FILE].is_file(follow_symlinks=False)
            and entries[CKPT_DIR].is_dir(follow_symlinks=False)):
        return False
    with os.scandir(Path(path) / CKPT_DIR) as it:
        return all(_TENSOR_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                   for e in it)


def _write_files(tmp: Path, cfg: Config, write_one, progress):
    """``ckpt-0/`` of every tensor of ``cfg``, ``write_one(path, spec)`` for each, up to 8
    files side by side (each generator or array is its own, numpy releases the GIL), then
    config.json."""
    specs = tensor_specs(cfg)
    (tmp / CKPT_DIR).mkdir()
    pool = ThreadPoolExecutor(min(num_threads(), 8), thread_name_prefix="minigrok-write")
    try:
        jobs = [pool.submit(write_one, tmp / CKPT_DIR / tensor_file(i), spec)
                for i, spec in enumerate(specs)]
        for i, job in enumerate(jobs):
            job.result()
            if progress:
                progress(i, len(specs), specs[i].name)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    (tmp / CONFIG_FILE).write_text(to_json(cfg))


_RECOGNISE = dict(recognise=written_by_minigrok,
                  what="a checkpoint minigrok wrote (ckpt-0/ of tensor files and config.json, "
                       "nothing else)")


def write_checkpoint(out, cfg: Config, tensors: dict, force: bool = False,
                     progress=None) -> Path:
    """Write given weights into ``out`` in the official format, as make_checkpoint writes
    random ones (same policy for ``out`` and ``force``).

    tensors: {official name: float32 array or QuantizedWeight8bit (int8 weight, bf16 scale
    bits)}, exactly the names and shapes checkpoint.tensor_specs(cfg) lists.
    """
    cfg.validate()
    specs = {s.name: s for s in tensor_specs(cfg)}
    if set(tensors) != set(specs):
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        raise ValueError(f"write_checkpoint: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, spec in specs.items():
        t = tensors[name]
        got = (tuple(t.weight.shape), tuple(t.scales.shape)) if spec.scales else (t.shape, None)
        if got != (spec.shape, spec.scales):
            raise ValueError(f"write_checkpoint: {name} is {got}, expected "
                             f"{(spec.shape, spec.scales)}")

    def write_one(path: Path, spec):
        t = tensors[spec.name]
        if spec.scales is None:
            value = pickle_writer.array_of(np.ascontiguousarray(t, dtype=np.float32))
        else:
            value = pickle_writer.quantized_value(
                pickle_writer.array_of(np.ascontiguousarray(t.weight, dtype=np.int8)),
                pickle_writer.array_of(np.ascontiguousarray(t.scales, dtype=np.uint16),
                                       bfloat16=True))
        with open(path, "wb") as f:
            pickle_writer.dump(value, f)

    return replace_dir(out, lambda tmp: _write_files(tmp, cfg, write_one, progress),
                       force=force, **_RECOGNISE)


def make_checkpoint(out, cfg: Config, seed: int = 0, force: bool = False, progress=None,
                    post_norm: float = POST_NORM) -> Path:
    """Write a random checkpoint for ``cfg`` into ``out`` (``out/ckpt-0/``, ``out/config.json``).

    Written by outputs.replace_dir: into a temporary sibling folder renamed at the end, so
    ``out`` is either the old checkpoint or the complete new one, never half of each or
    neither. An existing ``out`` that is not empty is refused unless ``force``, and even then
    replaced only where it is a checkpoint minigrok wrote (written_by_minigrok).
    ``post_norm``: the centre of the post-norm scales (see POST_NORM).
    """
    cfg.validate()
    return replace_dir(out, lambda tmp: _write_files(
        tmp, cfg, lambda path, spec: write_tensor(path, spec, seed, post_norm), progress),
        force=force, **_RECOGNISE)
