"""The suite catches the bugs Grok-1 ports ship: each test breaks minigrok on purpose (a
monkeypatch, undone after the test), runs the property that should notice, and asserts
that it fails. Each case first passes unbroken, so the failure is the mutant's doing.

Listed in the issue: numeric layer order, renormalised gates, exact-erf GELU, interleaved
RoPE, BOS prepended to prompts. Also: a second attention multiplier, a missing pad mask.
"""

import math

import numpy as np

import oracle_checks as oc
from minigrok.formats import checkpoint as mg_checkpoint
from minigrok.formats import tokenizer as mg_tokenizer
from minigrok.reference import attention as mg_attention
from minigrok.reference import moe as mg_moe
from minigrok.reference import rope as mg_rope

# 24 tokens (the quick profile's length: no extra compilation), pads inside.
TOKENS = np.array([5, 17, 0, 300, 9, 1000, 77, 12345, 3, 4, 2, 131071,
                   8, 9, 0, 11, 40, 41, 42, 0, 44, 45, 46, 47], np.int32)


def caught(check, *args):
    """True when check(*args) raises AssertionError (nothing goes into the table)."""
    with oc.not_recorded():
        try:
            check(*args)
        except AssertionError:
            return True
    return False


def passes(check, *args):
    with oc.not_recorded():
        check(*args)
    return True


# ------------------------------------------------------------------ numeric layer order

def test_numeric_layer_order_is_caught(oracle, tiny_dir, monkeypatch):
    """File i read as if the layers were stored 0, 1, 2, ... (they are stored in sorted
    string order 0, 1, 10, 11, 2, ...): the shapes all fit, the model is scrambled."""
    real_specs = mg_checkpoint.tensor_specs

    def numeric_order(cfg):
        specs = [s for s in real_specs(cfg) if not s.name.startswith("transformer/")]
        for layer in range(cfg.num_layers):
            specs += sorted(mg_checkpoint.layer_specs(cfg, layer), key=lambda s: s.name)
        return specs

    assert passes(oc.check_model_logits, oracle, tiny_dir, TOKENS, "float32")
    monkeypatch.setattr(mg_checkpoint, "tensor_specs", numeric_order)
    assert caught(oc.check_model_logits, oracle, tiny_dir, TOKENS, "float32")
    assert caught(oc.check_model_logits, oracle, tiny_dir, TOKENS, "bfloat16")
    assert caught(oc.check_restore, oracle, tiny_dir)


# ------------------------------------------------------------------ renormalised gates

def moe_case(tail=False, router_std=1.0, seed=7):
    rng = np.random.default_rng(seed)
    s = oc.Shapes(D=64, H=1, K=1, d=8, wf=2.0)
    w = oc.moe_weights_for(rng, s, router_std=router_std, tail=tail)
    x = rng.standard_normal((12, s.D)).astype(np.float32)
    return s, (np.abs(x) if tail else x), w


def test_renormalised_gates_are_caught_at_the_moe_output(oracle, monkeypatch):
    """Gates divided by their sum (as some ports do). The MoE output changes by the factor
    1/(g1 + g2) per token, and rms_norm_3 removes any per-token factor but for its eps:
    the layer output moves by ~eps / mean(m^2) (6e-5 here), far below bfloat16 precision.
    So the bug is caught at the MoE output; the layer property in run.py's precision
    passing under the mutant documents why it must be caught there."""
    real_route = mg_moe.route

    def renormalised(x, router, k):
        probs, ids, gates = real_route(x, router, k)
        return probs, ids, gates / gates.sum(-1, keepdims=True)

    s, x, w = moe_case(router_std=1.0)
    layer = layer_case()
    for dtype in ("float32", "bfloat16"):
        assert passes(oc.check_moe, oracle, s, x, w, dtype)
    monkeypatch.setattr(mg_moe, "route", renormalised)
    for dtype in ("float32", "bfloat16"):
        assert caught(oc.check_moe, oracle, s, x, w, dtype)
    assert passes(oc.check_decoder_layer, oracle, *layer, "bfloat16")


def layer_case(seed=11):
    rng = np.random.default_rng(seed)
    s = oc.Shapes(D=64, H=8, K=4, d=16, wf=2.0)
    w = oc.attention_weights_for(rng, s)
    w.update(oc.moe_weights_for(rng, s, router_std=1.0, prefix="moe_"))
    for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
        w[n] = (1 + 0.1 * rng.standard_normal(s.D)).astype(np.float32)
    tokens = np.array([3, 9, 0, 12, 5, 0, 7, 8], np.int32)
    x = rng.standard_normal((len(tokens), s.D)).astype(np.float32)
    return s, x, tokens, w


# ----------------------------------------------------------------------- exact-erf GELU

def test_erf_gelu_is_caught(oracle, tiny_dir, monkeypatch):
    """GELU in its exact erf form instead of jax.nn.gelu's default tanh approximation. The
    two differ by < 5e-4 in value, below bfloat16 resolution for most inputs, but by ~25%
    of the value in GELU's negative tail, where the MoE case puts its inputs. On the tiny
    model it moves the logits by ~4e-5 of the largest: caught by the float32 comparison
    (tolerance 1e-5), invisible in bfloat16."""
    erf = np.vectorize(math.erf, otypes=[np.float64])

    def erf_gelu(x):
        return (0.5 * x * (1 + erf(np.asarray(x, np.float64) / math.sqrt(2)))).astype(np.float32)

    s, x, w = moe_case(tail=True)
    for dtype in ("float32", "bfloat16"):
        assert passes(oc.check_moe, oracle, s, x, w, dtype)
    assert passes(oc.check_model_logits, oracle, tiny_dir, TOKENS, "float32")
    monkeypatch.setattr(mg_moe, "gelu", erf_gelu)
    for dtype in ("float32", "bfloat16"):
        assert caught(oc.check_moe, oracle, s, x, w, dtype)
    assert caught(oc.check_model_logits, oracle, tiny_dir, TOKENS, "float32")


# --------------------------------------------------------------------- interleaved RoPE

def test_interleaved_rope_is_caught(oracle, monkeypatch):
    """RoPE rotating interleaved pairs (x0, x1), (x2, x3), ... instead of the two halves."""
    def interleaved_angles(positions, d, base=mg_rope.BASE):
        inv = 1.0 / (np.float32(base) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
        return np.repeat(positions.astype(np.float32)[:, None] * inv[None, :], 2, axis=-1)

    def rotate_pairs(x):
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = -x[..., 1::2], x[..., 0::2]
        return out

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 16)).astype(np.float32)
    s, xa, tokens, w = layer_case()
    for dtype in ("float32", "bfloat16"):
        assert passes(oc.check_rope, oracle, x, 100, dtype)
    assert passes(oc.check_attention, oracle, s, xa, tokens, w, "float32")
    monkeypatch.setattr(mg_rope, "rope_angles", interleaved_angles)
    monkeypatch.setattr(mg_rope, "rotate_half", rotate_pairs)
    for dtype in ("float32", "bfloat16"):
        assert caught(oc.check_rope, oracle, x, 100, dtype)
    assert caught(oc.check_attention, oracle, s, xa, tokens, w, "float32")


# ------------------------------------------------------------------------- BOS prepended

def test_bos_prepended_to_the_prompt_is_caught(oracle, tiny_gen_dir, tokenizer, monkeypatch):
    """The official runner encodes the prompt as it is; a port that adds [BOS] (id 1)
    conditions every token on a different prompt."""
    real_encode = mg_tokenizer.encode
    prompt = "The answer to life the universe and everything is of course"
    # Two new tokens are enough: the prompt ids are compared first.
    assert passes(oc.check_generation, oracle, tiny_gen_dir, tokenizer, prompt, "bfloat16", 2, 32)
    monkeypatch.setattr(mg_tokenizer, "encode", lambda sp, text: [1] + real_encode(sp, text))
    assert caught(oc.check_generation, oracle, tiny_gen_dir, tokenizer, prompt, "bfloat16", 2, 32)


# --------------------------------------------------- attention multiplier, pad mask

def test_second_attention_multiplier_is_caught(oracle, monkeypatch):
    """attn_output_multiplier applied twice (e.g. once as 1/sqrt(d), once from the config)."""
    real = mg_attention.attention_weights
    s, x, tokens, w = layer_case()
    assert passes(oc.check_attention, oracle, s, x, tokens, w, "float32")
    monkeypatch.setattr(mg_attention, "attention_weights",
                        lambda q, k, keep, offset, m: real(q, k, keep, offset, m * m))
    for dtype in ("float32", "bfloat16"):
        assert caught(oc.check_attention, oracle, s, x, tokens, w, dtype)


def test_missing_pad_mask_is_caught(oracle, tiny_dir, monkeypatch):
    """Attention over pad keys (causal mask only)."""
    real = mg_attention.attention_weights
    s, x, tokens, w = layer_case()
    assert passes(oc.check_attention, oracle, s, x, tokens, w, "float32")
    monkeypatch.setattr(mg_attention, "attention_weights",
                        lambda q, k, keep, offset, m: real(q, k, np.ones_like(keep), offset, m))
    for dtype in ("float32", "bfloat16"):
        assert caught(oc.check_attention, oracle, s, x, tokens, w, dtype)
    assert caught(oc.check_model_logits, oracle, tiny_dir, TOKENS, "float32")
