"""Choosing the next token from the model's logits: temperature, nucleus (top-p), draw.

This follows ``top_p_filter`` and ``sample_token`` in the official ``runners.py``:
divide the logits by the temperature, drop everything outside the nucleus, then draw
from what is left. Two differences, both deliberate:

* ``temperature == 0`` means greedy (argmax). The official code would divide by
  zero; its own ``run.py`` uses 0.01 to get near-greedy output instead.
* The draw uses a NumPy ``Generator`` instead of JAX's PRNG, so a seed gives the same
  tokens from run to run here, but not the same tokens as the JAX code.
"""

import math

import numpy as np

from ..errors import MinigrokError
from .xp import array_module, to_numpy

# The official filter does not use -inf for dropped tokens but this large finite
# number (its comment says -inf; the code says -1e10). exp(-1e10 - max) is exactly
# 0 in float32, so a dropped token can never be drawn, and a row never turns NaN.
FILTERED_LOGIT = -1e10


def _softmax(x):
    """Softmax over the last axis, in the order jax.nn.softmax does it.

    x: float32 [..., V] -> float32 [..., V]
    """
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _check_top_p(top_p) -> None:
    values = np.asarray(to_numpy(top_p), dtype=np.float64)
    if not np.all((values > 0) & (values <= 1)):  # also rejects NaN
        raise MinigrokError(f"top_p must be in (0, 1], got {top_p}")


def top_p_filter(logits, top_p):
    """Keep the nucleus of each row of ``logits``; set every other logit to -1e10.

    logits: [V] or [B, V] (NumPy or CuPy), computed in float32 as the official code is.
    top_p:  a number in (0, 1], or one per row, shape [B].
    returns float32, same shape as ``logits``.

    The official rule, step by step: sort the row ascending and softmax it; the
    threshold is the first position where the running total of the *smallest*
    probabilities reaches ``1 - top_p``; every logit >= the logit there survives.

    What that means: the survivors are the most likely tokens, taken in order until
    their probability strictly exceeds ``top_p`` (or is all of it); ties with the
    last token taken are all kept, because the test is on the logit value.
    ``top_p == 1`` keeps every token (``cumsum >= 0`` holds at position 0). If float
    rounding stops the running total short of ``1 - top_p`` (only for a tiny top_p
    very close to 0), no position qualifies, argmax returns 0 and every token is kept;
    that is the official behaviour too.
    """
    _check_top_p(top_p)
    xp = array_module(logits)
    logits = xp.asarray(logits, dtype=xp.float32)
    top_p = xp.asarray(top_p, dtype=xp.float32)
    # [..., 1]: one threshold per row, broadcast against the row's V logits.
    reach = (xp.float32(1) - top_p)[..., None]

    sorted_logits = xp.sort(logits, axis=-1)  # ascending, like jax.lax.sort
    cumulative = xp.cumsum(_softmax(sorted_logits), axis=-1)
    threshold_idx = xp.argmax(cumulative >= reach, axis=-1)
    threshold = xp.take_along_axis(sorted_logits, threshold_idx[..., None], axis=-1)
    return xp.where(logits >= threshold, logits, xp.float32(FILTERED_LOGIT))


def check_settings(temperature: float, top_p: float, seed=0) -> None:
    """A MinigrokError naming the argument unless temperature >= 0 and finite, top_p in
    (0, 1] (NaN is neither) and seed a whole number >= 0 (what numpy's generator takes)."""
    if not (isinstance(temperature, (int, float, np.number)) and math.isfinite(temperature)
            and temperature >= 0):
        raise MinigrokError(f"temperature must be a finite number >= 0, got {temperature}")
    _check_top_p(top_p)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MinigrokError(f"seed must be a whole number >= 0, got a {type(seed).__name__}")
    if seed < 0:
        shown = seed if seed > -10**30 else "a negative number"
        raise MinigrokError(f"seed must be a whole number >= 0, got {shown}")


def sample_token(logits, temperature: float, top_p: float, rng: np.random.Generator):
    """Pick the next token.

    logits:      [V] (one sequence) or [B, V], NumPy or CuPy.
    temperature: 0 for greedy, else > 0; the logits are divided by it.
    top_p:       nucleus mass in (0, 1]; 1 keeps every token.
    rng:         numpy.random.Generator, the only source of randomness (unused
                 when greedy), so one seed always gives the same tokens.
    returns      an int for [V] logits, an int64 array [B] for [B, V].
    """
    check_settings(temperature, top_p)
    if temperature == 0:
        # Greedy: the argmax is unchanged by any positive temperature or by top-p
        # (the top token always survives), so neither needs computing.
        xp = array_module(logits)
        token = to_numpy(xp.argmax(logits, axis=-1))
        return int(token) if token.ndim == 0 else token.astype(np.int64)
    if rng is None:
        raise ValueError("sample_token needs an rng when temperature > 0")

    # One row of V floats: cheaper to copy to the host than to sample on the GPU
    # with a second random-number generator.
    host = to_numpy(logits).astype(np.float32)
    with np.errstate(over="ignore"):
        # float32 division, as the official code casts the temperature to the logits' dtype.
        scaled = host / np.float32(temperature)
    if not np.all(np.isfinite(scaled)) and np.all(np.isfinite(host)):
        raise MinigrokError(
            f"temperature {temperature} is too small: logits / temperature overflows "
            "float32 (use temperature 0 for greedy)")
    filtered = top_p_filter(scaled, top_p)

    # Categorical draw by the Gumbel-max trick, as jax.random.categorical does it:
    # argmax(logits + Gumbel noise) picks token i with probability softmax(logits)[i].
    # Filtered tokens sit at -1e10, far below anything the noise can lift them from.
    noise = rng.gumbel(size=filtered.shape)
    token = np.argmax(filtered.astype(np.float64) + noise, axis=-1)
    return int(token) if token.ndim == 0 else token.astype(np.int64)
