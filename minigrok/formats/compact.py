"""The compact form of a trained checkpoint: what minigrok commits for its built-in model.

A model trained over a reduced vocabulary (training/network.py) has V' distinct embedding
rows: one per token id its corpus uses, and one shared by all the other ids of the 131,072.
The official format stores the full [131072, D] float32 embedding, 67 MB at D = 128, almost
all of it copies of that shared row. The compact form keeps each distinct row once, and
every other tensor exactly as the checkpoint holds it (int8 weights with their bf16 scale
bits, float32 norms and routers), in one .npz:

    config.json            the config, as the checkpoint's config.json (bytes)
    vocab                  [V' - 1] int64: the full ids that have their own row, increasing
    <embeddings name>      [V', D] float32: their rows, then the shared row
    <name>                 a float32 tensor, by its official name
    <name>/weight, /scales a QuantizedWeight8bit's int8 weight and bf16 scale bits (uint16)

``expand`` turns it back into the checkpoint's tensors, byte for byte what was trained and
quantised, and make_checkpoint.write_checkpoint writes those in the official format.
"""

import json

import numpy as np

from ..errors import MinigrokError
from ..reference.config import Config, to_json
from ..reference.quant import QuantizedWeight8bit
from .checkpoint import EMBEDDINGS, tensor_specs

CONFIG_KEY = "config.json"
VOCAB_KEY = "vocab"


def save(file, cfg: Config, vocab, tensors: dict):
    """Write the compact form to ``file`` (a path or a binary file object).

    tensors: as write_checkpoint takes them, but the embeddings reduced to [V', D]."""
    arrays = {CONFIG_KEY: np.frombuffer(to_json(cfg).encode(), dtype=np.uint8),
              VOCAB_KEY: np.asarray(vocab, dtype=np.int64)}
    for name, t in tensors.items():
        if isinstance(t, QuantizedWeight8bit):
            arrays[name + "/weight"], arrays[name + "/scales"] = t.weight, t.scales
        else:
            arrays[name] = t
    np.savez_compressed(file, **arrays)


def load(file) -> tuple[Config, np.ndarray, dict]:
    """(config, vocab, tensors with the reduced embeddings) from a compact .npz, each tensor
    checked against the config's names and shapes."""
    with np.load(file, allow_pickle=False) as z:
        cfg = Config(**json.loads(bytes(z[CONFIG_KEY]).decode())).validate(str(file))
        vocab = z[VOCAB_KEY]
        tensors = {}
        for spec in tensor_specs(cfg):
            if spec.scales is None:
                tensors[spec.name] = z[spec.name]
            else:
                tensors[spec.name] = QuantizedWeight8bit(z[spec.name + "/weight"],
                                                         z[spec.name + "/scales"])
    rows = tensors[EMBEDDINGS].shape[0]
    if vocab.ndim != 1 or tensors[EMBEDDINGS].shape != (rows, cfg.emb_size) or \
            rows != len(vocab) + 1 or len(vocab) and (
            vocab.min() < 0 or vocab.max() >= cfg.vocab_size or np.any(np.diff(vocab) <= 0)):
        raise MinigrokError(f"{file}: vocab and embedding rows do not match")
    return cfg, vocab, tensors


def expand(cfg: Config, vocab, tensors: dict) -> dict:
    """The checkpoint's tensors: the reduced embeddings spread over all vocab_size ids
    (an id without its own row gets the shared last row)."""
    reduced = tensors[EMBEDDINGS]
    table = np.full(cfg.vocab_size, len(vocab), dtype=np.int64)
    table[vocab] = np.arange(len(vocab))
    return {**tensors, EMBEDDINGS: np.ascontiguousarray(reduced[table], dtype=np.float32)}
