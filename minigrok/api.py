"""The Python API: ``m = minigrok.load(path); m.logits(ids); m.generate("text")``."""

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from .engine import runtime
from .engine.devices import backend
from .environment import CACHE_ENV, cache_dir, ensure_cache_dir
from .errors import MinigrokError
from .formats import tokenizer as tok
from .formats.checkpoint import (CKPT_DIR, EMBEDDINGS, FINAL_NORM, layer_prefix, model_params,
                                 open_checkpoint)
from .formats import compact
from .formats.make_checkpoint import write_checkpoint
from .reference.generate import check_tokens, generate_tokens
from .reference.model import forward
from .reference.xp import array_module, to_numpy

# The built-in model: a small Grok-1 trained by ``minigrok train`` (training/), committed in
# the compact form (formats/compact.py) and written out in the official format on first use.
BUILTIN = Path(__file__).parent / "data" / "storyteller.npz"
BUILTIN_NAME = "storyteller"
BUILTIN_ABOUT = ("a small Grok-1-architecture model (4 layers, width 128, 8 experts, "
                 "the real tokenizer) trained by `minigrok train` on minigrok's procedural "
                 "children's stories: it tells such stories and knows nothing else, none of "
                 "Grok-1's knowledge")


def default_checkpoint(notice=sys.stderr) -> Path:
    """The built-in checkpoint, written into the cache the first time it is needed (its
    folder is named by the compact file's digest: a new model is never mistaken for the old)."""
    digest = hashlib.sha256(BUILTIN.read_bytes()).hexdigest()[:12]
    path = cache_dir() / f"{BUILTIN_NAME}-{digest}"
    if not (path / CKPT_DIR).is_dir():
        # Checked before the notice, so that a cache that cannot take it is the only line.
        folder = ensure_cache_dir()
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MinigrokError(f"cache folder {folder}: not writable, and the built-in "
                                f"checkpoint is not in it yet (set {CACHE_ENV} to a writable "
                                "folder, or pass --checkpoint)")
        if notice:
            print(f"minigrok: writing the built-in {BUILTIN_NAME} checkpoint to {path} (once)",
                  file=notice)
        cfg, vocab, tensors = compact.load(BUILTIN)
        write_checkpoint(path, cfg, compact.expand(cfg, vocab, tensors), force=True)
    if notice:
        print(f"minigrok: using the built-in {BUILTIN_NAME} checkpoint, {BUILTIN_ABOUT}. For "
              "the real model, download Grok-1 and pass --checkpoint /path/to/checkpoints "
              "(see README).", file=notice)
    return path


def check_gpu_memory(device: str, gpu_memory: float | None):
    """A GPU memory cap must be positive and go with a cuda device."""
    if gpu_memory is not None and (device == "cpu" or not gpu_memory > 0):
        raise MinigrokError(f"--gpu-memory {gpu_memory:g}: a number of GiB above 0, "
                            "for a cuda device")


class Model:
    """An opened checkpoint on a device, with its tokenizer found on first use."""

    def __init__(self, path, device: str = "cpu", tokenizer=None,
                 gpu_memory: float | None = None):
        check_gpu_memory(device, gpu_memory)
        self.xp = backend(device)
        self.device = device
        self.checkpoint = open_checkpoint(path)
        self.config = self.checkpoint.config
        params = model_params(self.checkpoint.params, self.config.num_layers)
        # The engine's parameters and decoder layer: on GPUs resident where they fit and
        # streamed where not (engine/placement.py), with their decode plans on GPUs (engine/
        # decode.py); the model code is the reference's.
        self.params, layer_fn, self.decode_plans = runtime.prepare(params, self.config, device,
                                                                    gpu_memory)
        self.layer_fn = _checked_first_forward(layer_fn, self.params)
        self._tokenizer_path = tokenizer
        self._sp = None

    @property
    def tokenizer(self):
        """The SentencePiece processor (``--tokenizer``, $MINIGROK_TOKENIZER, beside the
        checkpoint, in the cache, or downloaded)."""
        if self._sp is None:
            path = tok.find_tokenizer(self._tokenizer_path, self.checkpoint.root)
            sp = tok.load_tokenizer(path)
            # Every id the model can produce must have a piece: a smaller tokenizer is
            # another model's, and would fail on the first such id, mid-stream.
            tok.check_vocab(sp, self.config.vocab_size)
            self._sp = sp
        return self._sp

    def encode(self, text: str) -> list[int]:
        return tok.encode(self.tokenizer, text)

    def decode(self, ids) -> str:
        return tok.decode(self.tokenizer, ids)

    def logits(self, ids) -> np.ndarray:
        """Full-sequence logits, no cache: ids [T] -> float32 numpy [T, V]. More ids than the
        model's context (sequence_len) is an error: one pass has no prompt to shorten."""
        ids = check_tokens(ids, self.config.vocab_size, self.config.sequence_len)
        return to_numpy(forward(self.params, self.config, self.xp.asarray(ids),
                                layer_fn=self.layer_fn))

    def generate_ids(self, prompt, max_new_tokens: int = 32, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0):
        """Yield new token ids; ``prompt`` is text or a list of token ids."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return generate_tokens(self.params, self.config, ids, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, xp=self.xp,
                               layer_fn=self.layer_fn)

    def generate(self, prompt, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0):
        """Yield the new text piece by piece (see tokenizer.stream_text)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return tok.stream_text(self.tokenizer, ids, self.generate_ids(
            ids, max_new_tokens, temperature, top_p, seed))


def _not_finite(a) -> bool:
    """Whether an array, or a quantised weight's bf16 scales, holds a NaN or an infinity."""
    scales = getattr(a, "scales", None)
    if scales is not None:        # int8 is always finite; a bf16 NaN or inf has exponent 0xFF
        xp = array_module(scales)
        return bool(((xp.asarray(scales).view(xp.uint16) & 0x7F80) == 0x7F80).any())
    xp = array_module(a)
    return not bool(xp.isfinite(xp.asarray(a)).all())


def _bad_tensor(layer: dict, index: int) -> str | None:
    """The official name of the first tensor of layer ``index`` that is not finite."""
    for key, value in layer.items():
        for name, tensor in (value.items() if isinstance(value, dict) else [("", value)]):
            if _not_finite(tensor):
                inner = f"{key}/{name}/w" if name else f"{key}/" + ("w" if key == "router"
                                                                 else "scale")
                return layer_prefix(index) + inner
    return None


def _checked_first_forward(layer_fn, params):
    """``layer_fn``, watching the activations of the first forward pass: a checkpoint with a
    NaN or an infinity in a weight gives one error naming the tensor, instead of text made of
    whatever argmax makes of NaN. From the first clean pass on, the layer runs unwatched
    (each check waits for the GPU)."""
    clean = []

    def checked(h, layer, cfg, *, index=0, **kwargs):
        if clean:
            return layer_fn(h, layer, cfg, index=index, **kwargs)
        xp = array_module(h)
        if index == 0 and not bool(xp.isfinite(h).all()):
            raise MinigrokError(f"{EMBEDDINGS}: holds a NaN or an infinity (in the rows of "
                                "these tokens)")
        out = layer_fn(h, layer, cfg, index=index, **kwargs)
        if not bool(array_module(out).isfinite(out).all()):
            bad = _bad_tensor(layer, index)
            raise MinigrokError(f"{bad}: holds a NaN or an infinity" if bad else
                                f"layer {index} made a NaN or an infinity from finite "
                                "weights (its activations overflowed float32)")
        if index == len(params["layers"]) - 1:
            if _not_finite(params["rms_norm"]):
                raise MinigrokError(f"{FINAL_NORM}: holds a NaN or an infinity")
            clean.append(True)
        return out
    return checked


def load(path=None, device: str = "cpu", tokenizer=None, gpu_memory: float | None = None) -> Model:
    """Open a checkpoint (the folder holding ckpt-0/, or ckpt-0/ itself) on ``device``.

    ``path=None`` uses the built-in storyteller checkpoint (a small trained Grok-1, see
    default_checkpoint), written into the cache on first use.
    ``device``: cpu, cuda, cuda:N or cuda:N,M,... (layers split over those GPUs, see
    engine/placement.py); ``gpu_memory`` caps the GiB used per GPU (layers beyond it stream).
    """
    check_gpu_memory(device, gpu_memory)   # bad settings fail before anything is written
    backend(device)
    return Model(default_checkpoint() if path is None else path, device, tokenizer, gpu_memory)
