"""Autoregressive generation with a KV cache: prefill the prompt, then one token at a time.

Like the official runner, the prompt is used as given (no BOS is added) and a prompt
that does not fit the context keeps its *last* tokens. Unlike the official runner, which
always runs to its length limit, generation stops at the EOS token.
"""

import warnings

import numpy as np

from ..errors import MinigrokError
from .attention import new_cache
from .layer import decoder_layer
from .model import forward
from .sampling import check_settings, sample_token


def check_tokens(ids, vocab_size: int, sequence_len: int | None = None) -> list[int]:
    """Token ids as a list of ints, each in [0, vocab_size); a clear error otherwise.

    With ``sequence_len`` (the model's context), more ids than that is an error too, naming
    both numbers: the full-sequence commands (logits, golden) have no prompt to shorten.
    (generate_tokens keeps a long prompt's last tokens instead, with a warning.)
    """
    ids = list(ids)
    if not ids:
        raise MinigrokError("no tokens: give at least one token id")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        bad = next(i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool))
        shown = ascii(bad[:40]) if isinstance(bad, str) else \
            ascii(bad) if isinstance(bad, float) else type(bad).__name__
        raise MinigrokError(f"token ids must be integers, got {shown}")
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        shown = str(bad[0]) if abs(bad[0]) < 10**30 else \
            f"{'-' if bad[0] < 0 else ''}<a {bad[0].bit_length()}-bit number>"
        raise MinigrokError(f"token id {shown} is outside the vocabulary [0, {vocab_size})")
    if sequence_len is not None and len(ids) > sequence_len:
        raise MinigrokError(f"{len(ids)} tokens do not fit the model's context of "
                            f"{sequence_len} tokens (sequence_len in config.json)")
    return ids


def generate_tokens(params, cfg, prompt, *, max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int = 0, xp=np, layer_fn=decoder_layer):
    """Yield up to ``max_new_tokens`` new token ids (ints) after ``prompt`` (a list of ids).

    temperature 0 is greedy; otherwise logits / temperature go through the official
    nucleus filter (top_p) and a token is drawn from a generator seeded with ``seed``.
    Stops after yielding the EOS token. ``layer_fn``: see model.forward.
    """
    prompt = check_tokens(prompt, cfg.vocab_size)
    if not isinstance(max_new_tokens, int) or not 0 <= max_new_tokens < cfg.sequence_len:
        raise MinigrokError(f"max_new_tokens must be between 0 and {cfg.sequence_len - 1} "
                            f"(the context is {cfg.sequence_len}), got {max_new_tokens}")
    check_settings(temperature, top_p, seed)
    room = cfg.sequence_len - max_new_tokens
    if len(prompt) > room:
        warnings.warn(f"prompt of {len(prompt)} tokens does not fit the {cfg.sequence_len}-token "
                      f"context with {max_new_tokens} new tokens: keeping its last {room}")
        prompt = prompt[-room:]
    return _decode_loop(params, cfg, prompt, max_new_tokens, temperature, top_p, seed, xp,
                        layer_fn)


def _decode_loop(params, cfg, prompt, max_new_tokens, temperature, top_p, seed, xp, layer_fn):
    """The generator behind generate_tokens (split off so bad arguments fail at the call)."""
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    cache = new_cache(cfg.num_layers, len(prompt) + max_new_tokens, cfg.num_kv_heads,
                      cfg.key_size)
    logits = forward(params, cfg, xp.asarray(prompt), cache, last_only=True,
                     layer_fn=layer_fn)                                          # [1, V]
    for step in range(max_new_tokens):
        token = int(sample_token(logits[0], temperature, top_p, rng))
        yield token
        if token == cfg.eos_token or step == max_new_tokens - 1:
            return
        logits = forward(params, cfg, xp.asarray([token]), cache, last_only=True,
                         layer_fn=layer_fn)
