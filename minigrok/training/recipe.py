"""The built-in model's recipe: its Grok-1 config, how it is initialised, how it is trained.

The architecture is Grok-1's exactly (the same config.json fields and forward code): 8
experts with top-2, grouped-query attention, the soft cap, four norms per layer, tied
embeddings with both multipliers, the real 131,072-token vocabulary. Only the sizes are
small, so that it trains on 2 CPU cores in under an hour. 8 kv heads because the official
generation loop shards its KV cache 8 ways (the oracle runs on this model).
"""

import math

import numpy as np

from ..reference.config import GROK1, Config

CONFIG = Config(
    emb_size=128, key_size=16, num_q_heads=16, num_kv_heads=8, num_layers=4,
    widening_factor=4, sequence_len=256,
    attn_output_multiplier=1 / math.sqrt(16),          # 1/sqrt(key_size), as Grok-1's
    embedding_multiplier_scale=math.sqrt(128),          # sqrt(D), as Grok-1's
    output_multiplier_scale=GROK1.output_multiplier_scale,
)

RECIPE = {
    "config": CONFIG,
    "batch": 16, "seq_len": 256,                        # 4,096 tokens a step
    "steps": 2400,
    "lr": 2e-3, "warmup": 100, "weight_decay": 0.1,
    # Switch Transformer's load-balancing loss (gradients.balance_loss), weighted as there:
    # a training choice the released inference code has no trace of (the official MoE
    # has no auxiliary loss, router noise or capacity limit; neither does this one).
    "balance": 0.01,
    "train_stories": 60_000, "heldout_windows": 128,
    "eval_every": 100, "checkpoint_every": 100, "sample_tokens": 120,
}


def init_params(cfg: Config, rows: int, rng: np.random.Generator, xp=np) -> dict:
    """Initial parameters, the reference's tree with a [rows, D] embedding, float32.

    Embedding rows of rms 1/sqrt(D), so that embedding_multiplier_scale = sqrt(D) brings
    the input to unit rms; every matrix at 1/sqrt(fan-in); the router at a tenth of that,
    so that routing starts near uniform and the load even; norm scales at 1.
    """
    D, F, E = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size

    def normal(*shape, std):
        return xp.asarray((rng.standard_normal(shape) * std).astype(np.float32))

    def ones():
        return xp.ones(D, dtype=xp.float32)

    layers = [{
        "multi_head_attention": {"query": normal(D, q, std=D ** -0.5),
                                 "key": normal(D, kv, std=D ** -0.5),
                                 "value": normal(D, kv, std=D ** -0.5),
                                 "linear": normal(q, D, std=q ** -0.5)},
        "moe": {"linear": normal(E, D, F, std=D ** -0.5),
                "linear_v": normal(E, D, F, std=D ** -0.5),
                "linear_1": normal(E, F, D, std=F ** -0.5)},
        "router": normal(D, E, std=0.1 * D ** -0.5),
        **{n: ones() for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")},
    } for _ in range(cfg.num_layers)]
    return {"in_out_embed": normal(rows, D, std=D ** -0.5), "rms_norm": ones(),
            "layers": layers}


def tree_from_leaves(flat: dict) -> dict:
    """{"layers/0/moe/linear": a, ...} (adamw.leaves' paths) -> the nested tree."""
    tree = {}
    for path, value in flat.items():
        node, keys = tree, path.split("/")
        for key, nxt in zip(keys[:-1], keys[1:]):
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    tree["layers"] = [tree["layers"][str(i)] for i in range(len(tree["layers"]))]
    return tree
