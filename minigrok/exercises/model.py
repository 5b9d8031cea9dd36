"""Exercises embed_unembed, decoder_layer and greedy_generate: the model around its blocks.

embed_unembed: E[tokens] * embedding_multiplier_scale in, (h @ E.T) * output_multiplier_scale
out, one matrix for both (lesson 04). decoder_layer: the sandwich, h + rms_norm_1(attention(
rms_norm(h))) then + rms_norm_3(moe(rms_norm_2(h))) (lesson 10). greedy_generate: the argmax
of the last position, fed back, up to max_new_tokens or the EOS token (lessons 11-12), on a
tiny random Grok-1 the checker builds (TinyGrok), held to minigrok's generate_tokens.

Everything the checker hands a student's function here is built from minigrok's own
reference code on tiny random weights: Grok-1's attention and MoE for decoder_layer, the
whole forward pass for greedy_generate.
"""

import copy
import dataclasses
import math
import types

import numpy as np

from ..reference import attention as attention_mod
from ..reference import layer as layer_mod
from ..reference import model as model_mod
from ..reference import moe as moe_mod
from ..reference import rmsnorm
from ..reference.generate import generate_tokens
from .grading import Exercise, Failed, Mistake, Property, call, floats, fmt_array


# ------------------------------------------------------------------ tiny random Grok-1 parts

def tiny_config(vocab_size: int = 32, emb_size: int = 16, num_layers: int = 2,
                embedding_multiplier_scale: float = 1.0):
    """A Config with Grok-1's structure at toy size: 4 query heads on 2 kv heads of width 4,
    4 experts (top 2) of width 8, a 64-token context."""
    # Imported here: config.py reads config.json files (minigrok.environment), which the
    # grader itself never needs; only building a tiny model does.
    from ..reference.config import Config
    return Config(vocab_size=vocab_size, sequence_len=64, emb_size=emb_size, key_size=4,
                  num_q_heads=4, num_kv_heads=2, num_layers=num_layers, widening_factor=0.75,
                  num_experts=4, num_selected_experts=2, attn_output_multiplier=0.5,
                  embedding_multiplier_scale=embedding_multiplier_scale,
                  output_multiplier_scale=1 / math.sqrt(3), pad_token=0, eos_token=2)


def _normal(rng, shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def tiny_layer(rng, cfg) -> dict:
    """One decoder layer's parameters, as decoder_layer takes them (float32, not int8)."""
    D, E, F = cfg.emb_size, cfg.num_experts, cfg.ffn_size
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    return {
        "multi_head_attention": {"query": _normal(rng, (D, q), 1 / math.sqrt(D)),
                                 "key": _normal(rng, (D, kv), 1 / math.sqrt(D)),
                                 "value": _normal(rng, (D, kv), 1 / math.sqrt(D)),
                                 "linear": _normal(rng, (q, D), 1 / math.sqrt(q))},
        "moe": {"linear": _normal(rng, (E, D, F), 1 / math.sqrt(D)),
                "linear_v": _normal(rng, (E, D, F), 1 / math.sqrt(D)),
                "linear_1": _normal(rng, (E, F, D), 1 / math.sqrt(F))},
        "router": _normal(rng, (D, E), 1.0),
        **{name: (1 + _normal(rng, (D,), 0.2)) for name in
           ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")},
    }


def _times(factor) -> str:
    return "" if factor == 1 else f", output times {factor:g}"


class TinyAttention:
    """Grok-1's attention block (minigrok/reference/attention.py) on tiny random weights,
    causal, no cache: attention(x) with x [T, D] (already normed) -> [T, D]."""

    def __init__(self, seed: int, cfg):
        self.seed, self.cfg, self.factor = seed, cfg, 1.0
        self.params = tiny_layer(np.random.default_rng(seed), cfg)["multi_head_attention"]

    def __call__(self, x):
        x = _check_tokens_by_width(x, self.cfg.emb_size, "attention")
        cfg = self.cfg
        return attention_mod.attention(x, **self.params, num_q_heads=cfg.num_q_heads,
                                       num_kv_heads=cfg.num_kv_heads, key_size=cfg.key_size,
                                       multiplier=cfg.attn_output_multiplier,
                                       keep=np.ones(len(x), bool))

    def __repr__(self):
        return (f"attention (Grok-1's, random weights seed {self.seed}"
                f"{_times(self.factor)}, [T, {self.cfg.emb_size}] -> [T, {self.cfg.emb_size}])")


class TinyMoE:
    """Grok-1's mixture of experts (minigrok/reference/moe.py) on tiny random weights:
    moe(x) with x [T, D] (already normed) -> [T, D]."""

    def __init__(self, seed: int, cfg):
        self.seed, self.cfg, self.factor = seed, cfg, 1.0
        layer = tiny_layer(np.random.default_rng(seed + 1000), cfg)
        self.router, self.params = layer["router"], layer["moe"]

    def __call__(self, x):
        x = _check_tokens_by_width(x, self.cfg.emb_size, "moe")
        return moe_mod.moe(x, self.router, **self.params,
                           num_selected=self.cfg.num_selected_experts)[0]

    def __repr__(self):
        return (f"moe (Grok-1's, {self.cfg.num_experts} experts top "
                f"{self.cfg.num_selected_experts}, random weights seed {self.seed}"
                f"{_times(self.factor)}, [T, {self.cfg.emb_size}] -> [T, {self.cfg.emb_size}])")


def scaled(block, factor: float):
    """A copy of a TinyAttention or TinyMoE whose output is ``factor`` times as large (its
    last projection, attention's linear or the experts' linear_1, times ``factor``): what a
    post-norm divides out again."""
    out = copy.copy(block)
    out.factor = block.factor * factor
    last = "linear" if isinstance(block, TinyAttention) else "linear_1"
    out.params = dict(block.params, **{last: block.params[last] * np.float32(factor)})
    return out


class RMSNorm:
    """minigrok's rms_norm (reference/rmsnorm.py), with a name that prints the same every run."""

    def __call__(self, x, scale, eps=rmsnorm.EPS):
        return rmsnorm.rms_norm(x, scale, eps)

    def __repr__(self):
        return "rms_norm (minigrok's: x / sqrt(mean(x^2) + 1e-5) * scale)"


def _check_tokens_by_width(x, width, what):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != width or x.dtype.kind != "f":
        raise ValueError(f"{what}() takes float [T, {width}], got {x.dtype} {list(x.shape)}")
    return x.astype(np.float32, copy=False)


class TinyGrok:
    """A whole Grok-1 at toy size with random weights (minigrok/reference/model.py forward):
    forward(tokens) with tokens int [T] (the whole sequence, no cache) -> logits [T, V].

    The input embeddings are scaled down (embedding_multiplier_scale 0.1) so that the layers,
    not the last token's own row, decide the next token: the greedy continuation moves on
    instead of repeating one token, and a loop that feeds back the wrong thing shows.
    """

    def __init__(self, seed: int, vocab_size: int = 32, num_layers: int = 2):
        self.seed = seed
        self.cfg = tiny_config(vocab_size=vocab_size, num_layers=num_layers,
                               embedding_multiplier_scale=0.1)
        rng = np.random.default_rng(seed)
        D = self.cfg.emb_size
        self.params = {"in_out_embed": _normal(rng, (vocab_size, D), 1.0),
                       "rms_norm": 1 + _normal(rng, (D,), 0.2),
                       "layers": [tiny_layer(rng, self.cfg) for _ in range(num_layers)]}

    def __call__(self, tokens):
        t = np.asarray(tokens)
        if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "iu":
            raise ValueError(f"forward takes a non-empty 1-D sequence of int token ids, got "
                             f"{t.dtype} {list(t.shape)}")
        V = self.cfg.vocab_size
        if t.min() < 0 or t.max() >= V:
            bad = int(t.max() if t.max() >= V else t.min())
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {V})")
        return model_mod.forward(self.params, self.cfg, t.astype(np.int64))

    def __repr__(self):
        return (f"TinyGrok(seed {self.seed}: {self.cfg.num_layers} layers, vocab "
                f"{self.cfg.vocab_size}, D {self.cfg.emb_size}; forward(tokens) -> logits "
                f"[T, {self.cfg.vocab_size}])")


# ------------------------------------------------------------------ embed_unembed (lesson 04)

def _embed_reference(embeddings, tokens, h, embedding_multiplier_scale, output_multiplier_scale):
    params = {"in_out_embed": embeddings}
    cfg = types.SimpleNamespace(embedding_multiplier_scale=embedding_multiplier_scale,
                                output_multiplier_scale=output_multiplier_scale)
    return (model_mod.embed(params, cfg, tokens), model_mod.unembed(params, cfg, h))


EMBED_ARGS = ("embeddings", "tokens", "h", "embedding_multiplier_scale",
              "output_multiplier_scale")


def _embed_cases(st, hnp):
    @st.composite
    def cases(draw):
        V, D = draw(st.integers(2, 8)), draw(st.integers(1, 5))
        T, U = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        return {"embeddings": draw(hnp.arrays(np.float32, (V, D), elements=floats(st, 2))),
                "tokens": draw(hnp.arrays(np.int64, (T,), elements=st.integers(0, V - 1))),
                "h": draw(hnp.arrays(np.float32, (U, D), elements=floats(st, 2))),
                "embedding_multiplier_scale": draw(st.sampled_from(
                    [float(np.float32(math.sqrt(D))) if D > 1 else 3.0, 78.38367176906169, 4.0])),
                "output_multiplier_scale": draw(st.sampled_from([0.5773502691896257, 0.25]))}
    return cases()


def _embed_example():
    rng = np.random.default_rng(0)
    return {"embeddings": rng.standard_normal((10, 4), dtype=np.float32) * 0.5,
            "tokens": np.array([3, 1, 4, 1, 5]), "h": rng.standard_normal((2, 4), dtype=np.float32),
            "embedding_multiplier_scale": 2.0, "output_multiplier_scale": 0.5773502691896257}


def _embed_rows(ex, fn, case):
    x, _ = call(ex, fn, case)
    E, tokens, m = case["embeddings"], case["tokens"], case["embedding_multiplier_scale"]
    if x.shape != (len(tokens), E.shape[1]):
        return
    want = E[tokens].astype(np.float64) * np.float32(m)
    if not np.allclose(x, want, rtol=1e-5, atol=1e-5):
        t = int(np.argmax(np.abs(x - want).max(-1)))
        raise Failed([f"embedding {t} must be row tokens[{t}] = {int(tokens[t])} of the "
                      f"embedding matrix times embedding_multiplier_scale ({m:g})",
                      f"expected: {fmt_array(want[t])}", f"got:      {fmt_array(x[t])}"],
                     case, [x])


def _embed_tied(ex, fn, case):
    """logits[t, v] = h[t] . (embedding of v) * output_mult / embedding_mult: one matrix."""
    E = case["embeddings"]
    V = E.shape[0]
    every = dict(case, tokens=np.arange(V))
    x, logits = call(ex, fn, every)
    if x.shape != E.shape or logits.shape != (len(case["h"]), V):
        return
    m_in, m_out = case["embedding_multiplier_scale"], case["output_multiplier_scale"]
    want = case["h"].astype(np.float64) @ x.astype(np.float64).T * (m_out / m_in)
    if not np.allclose(logits, want, rtol=1e-4, atol=1e-4):
        raise Failed(["the embeddings are tied: token v's logit is h . (v's embedding), times "
                      "output_multiplier_scale / embedding_multiplier_scale (your own "
                      "embeddings of every token used for the check)",
                      f"h @ embed(every token).T * {m_out:g} / {m_in:g}:",
                      f"  {fmt_array(want)}", "your logits:", f"  {fmt_array(logits)}"],
                     case, [x, logits])


def _embed_variant(embeddings, tokens, h, m_in, m_out, *, emb=True, out=True, swap=False,
                   transposed=False):
    if swap:
        m_in, m_out = m_out, m_in
    x = embeddings[tokens].astype(np.float32) * (np.float32(m_in) if emb else 1)
    logits = (embeddings @ h.T) if transposed else (h @ embeddings.T)
    return x, logits.astype(np.float32) * (np.float32(m_out) if out else 1)


EMBED_UNEMBED = Exercise(
    "embed_unembed", "embed_unembed", EMBED_ARGS, ("x", "logits"),
    "tied embeddings and their two multipliers",
    "04_embeddings.py", "minigrok/reference/model.py: embed, unembed",
    _embed_reference,
    _embed_cases, _embed_example,
    lambda c: [(len(c["tokens"]), c["embeddings"].shape[1]),
               (len(c["h"]), c["embeddings"].shape[0])],
    properties=(Property("each embedding is its token's row times embedding_multiplier_scale",
                         _embed_rows),
                Property("the logits use the same matrix: h . embedding(v) * output / "
                         "embedding multiplier", _embed_tied)),
    mistakes=(Mistake("the embeddings are multiplied by embedding_multiplier_scale "
                      "(sqrt(6144) = 78.4 in Grok-1): E[tokens] alone starts the residual "
                      "stream 78x too small for the layers' updates",
                      lambda E, t, h, a, b: _embed_variant(E, t, h, a, b, emb=False)),
              Mistake("the logits are multiplied by output_multiplier_scale (1/sqrt(3) in "
                      "Grok-1): greedy decoding hides its absence, every sampling temperature "
                      "does not", lambda E, t, h, a, b: _embed_variant(E, t, h, a, b, out=False)),
              Mistake("the two multipliers are swapped: embedding_multiplier_scale goes with "
                      "the lookup (in), output_multiplier_scale with the logits (out)",
                      lambda E, t, h, a, b: _embed_variant(E, t, h, a, b, swap=True)),
              Mistake("E is [V, D]: the logits are h @ E.T, [T, V]; E @ h.T is their "
                      "transpose", lambda E, t, h, a, b: _embed_variant(E, t, h, a, b,
                                                                        transposed=True))))


# ------------------------------------------------------------------ decoder_layer (lesson 10)

LAYER_D = 8
_LAYER_CFG = {}


def _layer_cfg():
    if "cfg" not in _LAYER_CFG:
        _LAYER_CFG["cfg"] = tiny_config(emb_size=LAYER_D)
    return _LAYER_CFG["cfg"]


def _layer_reference(h, scales, rms_norm, attention, moe):
    # minigrok's decoder_layer, with the layer's parameters taken from the blocks the
    # checker built (TinyAttention, TinyMoE) and the four norm scales.
    layer = {"multi_head_attention": attention.params, "moe": moe.params,
             "router": moe.router,
             **{name: scales[i] for i, name in enumerate(
                 ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"))}}
    return layer_mod.decoder_layer(h, layer, attention.cfg, keep=np.ones(len(h), bool))


def _layer_cases(st, hnp):
    @st.composite
    def cases(draw):
        cfg = _layer_cfg()
        T = draw(st.integers(1, 3))
        seed = draw(st.integers(0, 3))
        return {"h": draw(hnp.arrays(np.float32, (T, LAYER_D), elements=floats(st, 3))),
                "scales": draw(hnp.arrays(np.float32, (4, LAYER_D),
                                          elements=st.floats(-2, 2, width=32))),
                "rms_norm": RMSNorm(),
                "attention": TinyAttention(seed, cfg), "moe": TinyMoE(seed, cfg)}
    return cases()


def _layer_example():
    cfg = _layer_cfg()
    rng = np.random.default_rng(0)
    return {"h": rng.standard_normal((3, LAYER_D), dtype=np.float32),
            "scales": (1 + 0.5 * rng.standard_normal((4, LAYER_D))).astype(np.float32),
            "rms_norm": RMSNorm(), "attention": TinyAttention(0, cfg),
            "moe": TinyMoE(0, cfg)}


def _block_outputs(case):
    """What attention and the MoE return inside minigrok's layer for this case: [T, D] each."""
    h, s, rms_norm = case["h"], case["scales"], rmsnorm.rms_norm
    a = case["attention"](rms_norm(h, s[0]))
    m = case["moe"](rms_norm(h + rms_norm(a, s[1]), s[2]))
    return {"attention": a, "moe": m}


def _layer_size_free(block: str, post: str):
    def check(ex, fn, case):
        # Rows whose block output is not tiny: times 100 their mean square dwarfs eps, so
        # the post-norm makes x 100 and x 10000 the same to float32 rounding.
        out = _block_outputs(case)[block].astype(np.float64)
        rows = np.sqrt((out ** 2).mean(-1)) >= 0.01
        if not rows.any():
            return
        outs = []
        for factor in (100.0, 10000.0):
            scaled_case = dict(case, **{block: scaled(case[block], factor)})
            got = call(ex, fn, scaled_case)[0]
            if got.shape != case["h"].shape:
                return
            outs.append(got)
        a, b = outs
        if not np.allclose(a[rows], b[rows], rtol=1e-3, atol=1e-3):
            raise Failed([f"the size of what {block}() returns must not matter: {post} "
                          f"normalises it before it is added to h. With {block}'s output "
                          f"times 100 and times 10000 your layer gives",
                          f"x 100:   {fmt_array(a)}", f"x 10000: {fmt_array(b)}"], case, [a])
    return check


def _layer_zero_post(ex, fn, case):
    scales = case["scales"].copy()
    scales[1] = 0
    scales[3] = 0
    zero = dict(case, scales=scales)
    out = call(ex, fn, zero)[0]
    h = case["h"]
    if out.shape != h.shape:
        return
    if not np.allclose(out, h, rtol=1e-5, atol=1e-5):
        raise Failed(["with the post-norm scales rms_norm_1 and rms_norm_3 (scales[1] and "
                      "scales[3]) all zero, both blocks add nothing and the layer returns h",
                      f"h:    {fmt_array(h)}", f"got:  {fmt_array(out)}"], zero, [out])


def _layer_variant(h, scales, rms_norm, attention, moe, *, post=True, pre=True,
                   norm_after_residual=False, names=(0, 1, 2, 3), parallel=False):
    s = [scales[i] for i in names]
    x = rms_norm(h, s[0]) if pre else h
    a = attention(x)
    if norm_after_residual:
        h1 = rms_norm(h + a, s[1])
    else:
        h1 = h + (rms_norm(a, s[1]) if post else a)
    src = h if parallel else h1
    x = rms_norm(src, s[2]) if pre else src
    m = moe(x)
    if norm_after_residual:
        return rms_norm(h1 + m, s[3])
    return h1 + (rms_norm(m, s[3]) if post else m)


DECODER_LAYER = Exercise(
    "decoder_layer", "decoder_layer", ("h", "scales", "rms_norm", "attention", "moe"), ("out",),
    "one decoder layer: two residual blocks, each in a sandwich of RMSNorms",
    "10_decoder_layer.py", "minigrok/reference/layer.py: decoder_layer",
    _layer_reference,
    _layer_cases, _layer_example, lambda c: [c["h"].shape],
    properties=(Property("the size of attention's output does not matter (rms_norm_1 "
                         "normalises it)", _layer_size_free("attention", "rms_norm_1")),
                Property("the size of the MoE's output does not matter (rms_norm_3 "
                         "normalises it)", _layer_size_free("moe", "rms_norm_3")),
                Property("with zero post-norm scales the layer returns h", _layer_zero_post)),
    mistakes=(Mistake("Grok-1 normalises each block's output too: h + rms_norm_1(attention("
                      "rms_norm(h))), then h + rms_norm_3(moe(rms_norm_2(h))); a pre-norm "
                      "layer (Llama's) drops the post-norms rms_norm_1 and rms_norm_3",
                      lambda *a: _layer_variant(*a, post=False)),
              Mistake("the residual is added after the post-norm, not before: h + "
                      "rms_norm_1(a), not rms_norm_1(h + a)",
                      lambda *a: _layer_variant(*a, norm_after_residual=True)),
              Mistake("attention and the MoE read normalised input: rms_norm(h) and "
                      "rms_norm_2(h), the pre-norms", lambda *a: _layer_variant(*a, pre=False)),
              Mistake("the norms are numbered in the order they are used: rms_norm before "
                      "attention, rms_norm_1 after it, rms_norm_2 before the MoE, rms_norm_3 "
                      "after it", lambda *a: _layer_variant(*a, names=(0, 2, 1, 3))),
              Mistake("the blocks run one after the other: the MoE reads h after attention's "
                      "update, rms_norm_2(h + rms_norm_1(a)), not the layer's input (a "
                      "parallel layer)", lambda *a: _layer_variant(*a, parallel=True))),
    rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ greedy_generate (lessons 11-12)

GEN_ARGS = ("forward", "prompt", "max_new_tokens", "eos_token")


def _greedy_reference(forward, prompt, max_new_tokens, eos_token):
    # minigrok's generate_tokens, greedy (temperature 0), with the KV cache, on the model
    # behind ``forward``; its EOS is eos_token.
    cfg = dataclasses.replace(forward.cfg, eos_token=int(eos_token))
    return np.array(list(generate_tokens(forward.params, cfg, [int(t) for t in prompt],
                                         max_new_tokens=int(max_new_tokens))), dtype=np.int64)


def _gen_cases(st, hnp):
    @st.composite
    def cases(draw):
        forward = TinyGrok(draw(st.integers(0, 3)))
        V = forward.cfg.vocab_size
        prompt = draw(hnp.arrays(np.int64, (draw(st.integers(1, 5)),),
                                 elements=st.integers(3, V - 1)))
        n = draw(st.integers(0, 7))
        # An EOS the model does produce (at a drawn step), or Grok-1's 2.
        free = _greedy_reference(forward, prompt, n, -1).tolist()
        eos = draw(st.sampled_from(sorted(set(free)) + [2]))
        return {"forward": forward, "prompt": prompt, "max_new_tokens": n, "eos_token": eos}
    return cases()


def _gen_example():
    forward = TinyGrok(0)
    prompt = np.array([5, 17, 30, 11], dtype=np.int64)
    free = _greedy_reference(forward, prompt, 8, -1).tolist()
    return {"forward": forward, "prompt": prompt, "max_new_tokens": 8, "eos_token": free[3]}


def _tokens(ex, fn, case):
    got = call(ex, fn, case)[0]
    if got.ndim != 1 or (got.size and got.dtype.kind not in "iu"):
        raise Failed([f"return the new tokens as a 1-D array of int ids, got {got.dtype} "
                      f"{list(got.shape)}"], case, [got])
    return got


def _gen_stops(ex, fn, case):
    got = _tokens(ex, fn, case).tolist()
    n, eos = case["max_new_tokens"], case["eos_token"]
    if len(got) > n:
        raise Failed([f"at most max_new_tokens = {n} new tokens, got {len(got)}: {got}"],
                     case, [np.array(got)])
    if eos in got[:-1]:
        raise Failed([f"generation stops right after the EOS token ({eos}), which is the last "
                      f"token returned; yours goes on: {got}"], case, [np.array(got)])


def _gen_argmax(ex, fn, case):
    got = _tokens(ex, fn, case).tolist()
    problem = _not_greedy(case, got)
    if problem:
        raise Failed(problem, case, [np.array(got)])


def _not_greedy(case, got):
    """Why ``got`` is not the greedy continuation (each token the argmax of the logits at the
    last position of everything before it, ties within float32 rounding allowed), or None."""
    forward, seq = case["forward"], [int(t) for t in case["prompt"]]
    V = forward.cfg.vocab_size
    for step, token in enumerate(got):
        if not 0 <= token < V:
            return [f"new token {step} is {token}, outside the vocabulary [0, {V})"]
        row = forward(np.array(seq))[-1].astype(np.float64)
        if row[token] < row.max() - 1e-5 * (1 + np.abs(row).max()):
            return [f"new token {step} must be the argmax of the logits at the LAST position of "
                    f"the sequence so far (the prompt and the {step} tokens before it): "
                    f"{int(np.argmax(row))}, not {token}",
                    f"sequence so far: {seq}"]
        seq.append(token)
    return None


def _gen_compare(ex, got, want, case):
    g, w = got[0].reshape(-1).tolist(), want[0].tolist()
    if g == w:
        return
    # The reference decodes with the KV cache; a loop without one gets the same logits to
    # float32 rounding, so a token chosen between two equal-looking logits counts as right.
    n, eos = case["max_new_tokens"], case["eos_token"]
    stops_right = len(g) == n or (g and g[-1] == eos)
    if _not_greedy(case, g) is None and stops_right and eos not in g[:-1] and len(g) <= n:
        return
    raise Failed(["tokens: yours differ from minigrok's generate_tokens (greedy)",
                  f"expected: {w}", f"got:      {g}"], case)


def _gen_loop(forward, prompt, max_new_tokens, eos_token, *, stop_at_eos=True, extra=0,
              bos=False, position=-1, keep_eos=True, only_last=False, with_prompt=False):
    seq = ([1] if bos else []) + [int(t) for t in prompt]
    new = []
    for _ in range(max_new_tokens + extra):
        logits = forward(np.array(seq[-1:] if only_last and new else seq))
        token = int(np.argmax(logits[position]))
        if token == eos_token and stop_at_eos and not keep_eos:
            break
        new.append(token)
        seq.append(token)
        if token == eos_token and stop_at_eos:
            break
    return np.array(([int(t) for t in prompt] if with_prompt else []) + new, dtype=np.int64)


GREEDY_GENERATE = Exercise(
    "greedy_generate", "greedy_generate", GEN_ARGS, ("tokens",),
    "greedy generation: argmax at the last position, fed back, until EOS or the limit",
    "12_generation.py", "minigrok/reference/generate.py: generate_tokens (temperature 0)",
    _greedy_reference,
    _gen_cases, _gen_example,
    # The number of tokens is part of the answer: the comparison shows both lists.
    lambda c: [],
    properties=(Property("at most max_new_tokens tokens, ending at the first EOS",
                         _gen_stops),
                Property("each token is the argmax of the last position's logits",
                         _gen_argmax)),
    mistakes=(Mistake("stop after the EOS token: generation ends as soon as the model emits "
                      "eos_token (return it, as the last token)",
                      lambda *a: _gen_loop(*a, stop_at_eos=False)),
              Mistake("max_new_tokens is how many tokens to generate, no more: your loop "
                      "makes one too many", lambda *a: _gen_loop(*a, extra=1)),
              Mistake("the official runner adds no [BOS]: feed the prompt as it is",
                      lambda *a: _gen_loop(*a, bos=True)),
              Mistake("the next token is the argmax of the LAST position's logits, "
                      "logits[-1]; logits[0] is the prediction after the first token",
                      lambda *a: _gen_loop(*a, position=0)),
              Mistake("the EOS token itself is returned, as the last token, then "
                      "generation stops", lambda *a: _gen_loop(*a, keep_eos=False)),
              Mistake("forward has no cache: give it the whole sequence (prompt and every "
                      "token so far) at each step, not only the newest token",
                      lambda *a: _gen_loop(*a, only_last=True)),
              Mistake("return only the new tokens, not the prompt in front of them",
                      lambda *a: _gen_loop(*a, with_prompt=True))),
    compare=_gen_compare)
