"""The whole Grok-1 model's training loss and its gradient with respect to every parameter.

The forward is reference/model.forward on a batch, assembled from the component pairs of
gradients.py (tests/test_training.py holds its logits to the reference's on the same
weights); the backward runs the same steps in reverse.

Training runs over a *reduced vocabulary*: the V' - 1 token ids the corpus uses, plus one
last row that stands for every other id of the 131,072. All of those share that one
embedding row, so in the full model each of them has the same logit, and the full softmax
over 131,072 tokens is the reduced one with the shared row's logit raised by log(count).
The loss is therefore exactly the full-vocabulary cross-entropy, and the model learns to
give the unused ids (together) almost no probability: the shipped model's distribution
over all 131,072 tokens is the trained one (training/release.py expands the rows).

Parameters are the reference's tree of plain float arrays ({"in_out_embed", "rms_norm",
"layers": [...]}, names as in the checkpoint), the embedding reduced to [V', D].
"""

import math

from ..reference.xp import array_module
from .gradients import (attention_backward, attention_forward, balance_loss, moe_backward,
                        moe_forward, rms_norm_backward, rms_norm_forward)

NORMS = ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")


def layer_forward(h, layer, cfg, keep):
    """h: [B, T, D] -> (h' [B, T, D], cache): reference.layer.decoder_layer, batched."""
    B, T, D = h.shape
    attn = dict(num_q_heads=cfg.num_q_heads, num_kv_heads=cfg.num_kv_heads,
                key_size=cfg.key_size, multiplier=cfg.attn_output_multiplier, keep=keep)
    x, n0 = rms_norm_forward(h, layer["rms_norm"])
    a, ca = attention_forward(x, **layer["multi_head_attention"], **attn)
    a, n1 = rms_norm_forward(a, layer["rms_norm_1"])
    h = h + a
    x, n2 = rms_norm_forward(h, layer["rms_norm_2"])
    m, cm = moe_forward(x.reshape(B * T, D), layer["router"], **layer["moe"],
                        num_selected=cfg.num_selected_experts)
    m, n3 = rms_norm_forward(m, layer["rms_norm_3"])
    return h + m.reshape(B, T, D), (n0, ca, n1, n2, cm, n3)


def layer_backward(g, layer, cfg, cache, balance: float):
    """g: dL/dh' [B, T, D] -> (dL/dh, this layer's gradient tree, its balance loss)."""
    n0, ca, n1, n2, cm, n3 = cache
    B, T, D = g.shape
    grads = {}
    dm, grads["rms_norm_3"] = rms_norm_backward(g.reshape(B * T, D), layer["rms_norm_3"], n3)
    aux, daux = balance_loss(cm["probs"], cm["ids"], cfg.num_experts)
    dx, moe = moe_backward(dm, layer["router"], **layer["moe"], cache=cm,
                           dprobs_extra=balance * daux)
    grads["router"] = moe.pop("router")
    grads["moe"] = moe
    dx, grads["rms_norm_2"] = rms_norm_backward(dx.reshape(B, T, D), layer["rms_norm_2"], n2)
    g = g + dx
    da, grads["rms_norm_1"] = rms_norm_backward(g, layer["rms_norm_1"], n1)
    dx, grads["multi_head_attention"] = attention_backward(
        da, **layer["multi_head_attention"], cache=ca)
    dx, grads["rms_norm"] = rms_norm_backward(dx, layer["rms_norm"], n0)
    return g + dx, grads, aux


def logits_forward(params, cfg, inputs, keep=None):
    """inputs: [B, T] reduced ids -> (logits [B*T, V'] of the reduced vocabulary (the
    reference's logits, before the shared row's log(count)), cache)."""
    xp = array_module(inputs)
    E = params["in_out_embed"]
    B, T = inputs.shape
    keep = xp.ones((B, T), dtype=bool) if keep is None else keep
    h = E[inputs] * cfg.embedding_multiplier_scale                             # [B, T, D]
    caches = []
    for layer in params["layers"]:
        h, cache = layer_forward(h, layer, cfg, keep)
        caches.append(cache)
    y, nf = rms_norm_forward(h, params["rms_norm"])
    y = y.reshape(B * T, -1)                                                   # [N, D]
    return (y @ E.T) * cfg.output_multiplier_scale, (inputs, caches, y, nf)


def log_softmax_full(logits, others: int):
    """logits: [N, V'] (the last column standing for ``others`` ids) -> the full-vocabulary
    log-probabilities of the V' columns [N, V'] (the last one: of *each* of those ids)."""
    xp = array_module(logits)
    shifted = logits.copy()
    shifted[:, -1] += math.log(others)
    top = shifted.max(axis=-1, keepdims=True)
    lse = top + xp.log(xp.exp(shifted - top).sum(axis=-1, keepdims=True))      # [N, 1]
    return logits - lse


def loss_and_grads(params, cfg, inputs, targets, others: int, balance: float = 0.0):
    """Mean full-vocabulary cross-entropy of predicting ``targets`` after ``inputs`` (both
    [B, T] reduced ids), plus ``balance`` times the mean load-balancing loss of the layers.

    Returns (loss, stats, grads): stats has "ce" (the cross-entropy alone) and "balance"
    (the mean over layers); grads mirrors params.
    """
    xp = array_module(inputs)
    E = params["in_out_embed"]
    logits, (inputs, caches, y, nf) = logits_forward(params, cfg, inputs)
    N = logits.shape[0]
    logp = log_softmax_full(logits, others)                                    # [N, V']
    t = targets.reshape(N)
    ce = -float(logp[xp.arange(N), t].mean())
    # d(-log p_t)/dlogit_j = p_j - [j = t]; the shared column's p is its whole group's.
    dlogits = xp.exp(logp)
    dlogits[:, -1] *= others
    dlogits[xp.arange(N), t] -= 1.0
    dlogits *= cfg.output_multiplier_scale / N
    grads = {"in_out_embed": dlogits.T @ y}                                    # [V', D]
    dy = dlogits @ E                                                           # [N, D]
    B, T = inputs.shape
    dh, grads["rms_norm"] = rms_norm_backward(dy.reshape(B, T, -1), params["rms_norm"], nf)
    layer_grads, aux = [], []
    for layer, cache in zip(reversed(params["layers"]), reversed(caches)):
        dh, lg, a = layer_backward(dh, layer, cfg, cache, balance / len(caches))
        layer_grads.append(lg)
        aux.append(a)
    grads["layers"] = layer_grads[::-1]
    xp.add.at(grads["in_out_embed"], inputs.reshape(N),
              dh.reshape(N, -1) * cfg.embedding_multiplier_scale)
    mean_aux = sum(aux) / len(aux)
    stats = {"ce": ce, "balance": mean_aux}
    return ce + balance * mean_aux, stats, grads


def heldout_loss(params, cfg, inputs, targets, others: int, batch: int) -> float:
    """Mean full-vocabulary cross-entropy (nats/token) of [W, T] reduced-id windows,
    ``batch`` windows at a time."""
    xp = array_module(inputs)
    total = 0.0
    for i in range(0, len(inputs), batch):
        logp = log_softmax_full(logits_forward(params, cfg, inputs[i:i + batch])[0], others)
        y = targets[i:i + batch].ravel()
        total += -float(logp[xp.arange(y.size), y].sum())
    return total / inputs.size


def expert_load(params, cfg, inputs):
    """The share of the top-k choices each expert gets, per layer, over [B, T] reduced-id
    ``inputs``: [L, E] (1/E everywhere is an even load)."""
    xp = array_module(inputs)
    caches = logits_forward(params, cfg, inputs)[1][1]
    return xp.stack([xp.bincount(c[4]["ids"].ravel(), minlength=cfg.num_experts) / c[4]["ids"].size
                     for c in caches])
