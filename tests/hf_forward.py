"""A Grok-1 forward pass over an exported Hugging Face folder, written from docs/export.md's
table and config.json alone (not from minigrok's model): the independent check that the
export means what minigrok means. float64 throughout, one sequence, no cache.
"""

import json
from pathlib import Path

import ml_dtypes  # noqa: F401  (lets numpy read bfloat16 safetensors)
import numpy as np
from safetensors import safe_open


def load(folder) -> tuple[dict, dict]:
    """(config.json, {name: float64 array}) of an export."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(folder / shard, "numpy") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name).astype(np.float64)
    return config, tensors


def logits(folder, tokens, names=("attn", "moe_block", ("linear", "linear_v", "linear_1"),
                                   "scale")) -> np.ndarray:
    """[T] token ids -> [T, V] logits of the exported model (names: the hf set, or SGLang's
    ("self_attn", "block_sparse_moe", ("w1", "w3", "w2"), "weight"))."""
    c, w = load(folder)
    attn, moe, (gate_name, up_name, down_name), norm = names
    eps, cap = c["rms_norm_eps"], c["max_attn_value"]
    H, K, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    tokens = np.asarray(tokens)
    T = len(tokens)

    def rms(x, scale):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale

    def rope(x):                                    # x [T, heads, d], rotate-half layout
        inv = 1.0 / c["rope_theta"] ** (np.arange(0, d, 2) / d)
        angle = np.arange(T)[:, None] * inv[None]
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
        x1, x2 = x[..., :d // 2], x[..., d // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def gelu(x):                                    # the tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    h = w["model.embed_tokens.weight"][tokens] * c["embedding_multiplier_scale"]
    visible = (np.arange(T)[None] <= np.arange(T)[:, None]) & (tokens != c["pad_token_id"])[None]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms(h, w[f"{p}pre_attn_norm.{norm}"])
        q = rope((x @ w[f"{p}{attn}.q_proj.weight"].T).reshape(T, H, d))
        k = rope((x @ w[f"{p}{attn}.k_proj.weight"].T).reshape(T, K, d))
        v = (x @ w[f"{p}{attn}.v_proj.weight"].T).reshape(T, K, d)
        k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)
        s = np.einsum("thd,shd->hts", q, k) * c["attn_output_multiplier"]
        s = np.where(visible[None], cap * np.tanh(s / cap), -1e30)
        p_ = np.exp(s - s.max(-1, keepdims=True))
        p_ /= p_.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", p_, v).reshape(T, H * d) @ w[f"{p}{attn}.o_proj.weight"].T
        h = h + rms(a, w[f"{p}post_attn_norm.{norm}"])
        x = rms(h, w[f"{p}pre_moe_norm.{norm}"])
        r = x @ w[f"{p}{moe}.gate.weight"].T
        probs = np.exp(r - r.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(T):
            # top-k by probability, the lower index first on a tie; gates NOT renormalised
            top = sorted(range(probs.shape[1]), key=lambda e: (-probs[t, e], e))
            for e in top[:c["num_experts_per_tok"]]:
                pe = f"{p}{moe}.experts.{e}."
                gate, up = (x[t] @ w[pe + f"{n}.weight"].T for n in (gate_name, up_name))
                y = gelu(gate) * up
                out[t] += probs[t, e] * (y @ w[pe + f"{down_name}.weight"].T)
        h = h + rms(out, w[f"{p}post_moe_norm.{norm}"])
    h = rms(h, w[f"model.norm.{norm}"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return h @ head.T * c["output_multiplier_scale"]
