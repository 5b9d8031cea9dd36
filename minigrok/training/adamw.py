"""AdamW (Loshchilov & Hutter 2019), the optimizer most transformers are trained with.

Chosen over plain SGD because the model's parameters live on very different scales (norm
scales near 1, embedding rows near 1/sqrt(D), a router whose logits must grow decisive),
and Adam's per-parameter step size needs no tuning per group. Weight decay is decoupled
from the gradient and applies to the matrices only: the norm scales are multipliers whose
natural value is 1, and decaying them toward 0 would fight every RMSNorm.
"""

import math

from ..reference.xp import array_module


def leaves(tree, prefix: str = ""):
    """(path, array) of every array in a nested dict/list tree, in a fixed order."""
    if isinstance(tree, dict):
        for key in tree:
            yield from leaves(tree[key], f"{prefix}/{key}" if prefix else key)
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from leaves(item, f"{prefix}/{i}")
    else:
        yield prefix, tree


def init_state(params) -> dict:
    """Zero first and second moments for every parameter, and the step count."""
    state = {"step": 0}
    for name, p in leaves(params):
        xp = array_module(p)
        state["m/" + name], state["v/" + name] = xp.zeros_like(p), xp.zeros_like(p)
    return state


def global_norm(grads) -> float:
    return math.sqrt(sum(float((g * g).sum()) for _, g in leaves(grads)))


def step(params, grads, state, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
         eps: float = 1e-8, clip: float = 1.0) -> float:
    """One AdamW update of ``params`` in place, gradients first clipped to global norm
    ``clip``. Returns the gradient norm before clipping."""
    norm = global_norm(grads)
    scale = min(1.0, clip / (norm + 1e-12))
    state["step"] += 1
    b1, b2 = betas
    c1, c2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
    grads = dict(leaves(grads))
    for name, p in leaves(params):
        m, v = state["m/" + name], state["v/" + name]
        g = grads[name] * scale
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        if p.ndim >= 2:                                # matrices only (see the docstring)
            p *= 1 - lr * weight_decay
        p -= lr * (m / c1) / ((v / c2) ** 0.5 + eps)
    return norm


def schedule(step_index: int, steps: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Learning rate: linear warm-up over ``warmup`` steps, then a cosine down to
    ``floor * peak`` at the last step."""
    if step_index < warmup:
        return peak * (step_index + 1) / warmup
    done = (step_index - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))
