"""Export a Grok-1 checkpoint to the Hugging Face layout that vLLM and SGLang load.

The mapping (docs/export.md has it as a table, with the sources it was read from):

* every int8 matrix is dequantised exactly as minigrok does (``int8 x bf16 scale`` per row
  block, in float32), transposed from JAX's [in, out] to PyTorch's [out, in], and rounded
  once to the export dtype;
* the stacked experts [E, in, out] become one tensor per expert;
* the four norms of a layer, in the official order rms_norm, rms_norm_1, rms_norm_2,
  rms_norm_3, become pre_attn_norm, post_attn_norm, pre_moe_norm, post_moe_norm;
* two name sets: ``hf`` (the Hugging Face port ``Grok1ModelForCausalLM``, which vLLM loads)
  and ``sglang`` (SGLang's Mixtral-style names, with the untied ``lm_head`` it requires).

config.json states every Grok-1 constant, since the ports' own defaults differ (the Hugging
Face port's config class defaults the attention soft cap and both multipliers to 1.0).
Everything streams: a tensor is produced a few MB of rows at a time, so memory stays small
whatever the model's size.
"""

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import MinigrokError
from ..formats.checkpoint import EMBEDDINGS, FINAL_NORM, layer_prefix, open_checkpoint
from ..formats.tokenizer import find_tokenizer
from ..outputs import replace_dir
from ..reference.quant import QuantizedWeight8bit, dequantize
from . import safetensors

FORMATS = ("hf", "sglang")
CHUNK_ELEMENTS = 1 << 22                  # float32 values produced at a time: 16 MB
INDEX_FILE = "model.safetensors.index.json"
NORMS = (("rms_norm", "pre_attn_norm"), ("rms_norm_1", "post_attn_norm"),
         ("rms_norm_2", "pre_moe_norm"), ("rms_norm_3", "post_moe_norm"))

# Per name set: (attention module, MoE module, expert names for linear / linear_v / linear_1,
# the norms' parameter name, whether lm_head is stored).
_NAMES = {
    "hf": ("attn", "moe_block", ("linear", "linear_v", "linear_1"), "scale", False),
    "sglang": ("self_attn", "block_sparse_moe", ("w1", "w3", "w2"), "weight", True),
}


def tensor_map(cfg, fmt: str) -> list[tuple]:
    """Every exported tensor, in file order: (name, shape, official name, expert or None,
    transposed). Shapes are PyTorch's: [out, in] for every matrix."""
    attn, moe, experts, norm, lm_head = _NAMES[fmt]
    D, E, F = cfg.emb_size, cfg.num_experts, cfg.ffn_size
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    out = [("model.embed_tokens.weight", (cfg.vocab_size, D), EMBEDDINGS, None, False)]
    if lm_head:               # SGLang never ties: the same rows again (not pre-multiplied)
        out.append(("lm_head.weight", (cfg.vocab_size, D), EMBEDDINGS, None, False))
    out.append((f"model.norm.{norm}", (D,), FINAL_NORM, None, False))
    for i in range(cfg.num_layers):
        p, src = f"model.layers.{i}.", layer_prefix(i)
        for proj, name, width in (("q_proj", "query", q), ("k_proj", "key", kv),
                                  ("v_proj", "value", kv)):
            out.append((f"{p}{attn}.{proj}.weight", (width, D),
                        f"{src}multi_head_attention/{name}/w", None, True))
        out.append((f"{p}{attn}.o_proj.weight", (D, q), f"{src}multi_head_attention/linear/w",
                    None, True))
        out.append((f"{p}{moe}.gate.weight", (E, D), f"{src}router/w", None, True))
        for e in range(E):
            for official, exported, shape in zip(("linear", "linear_v", "linear_1"), experts,
                                                 ((F, D), (F, D), (D, F))):
                out.append((f"{p}{moe}.experts.{e}.{exported}.weight", shape,
                            f"{src}moe/{official}/w", e, True))
        for official, exported in NORMS:
            out.append((f"{p}{exported}.{norm}", (D,), f"{src}{official}/scale", None, False))
    return out


def hf_config(cfg, fmt: str, dtype: str) -> dict:
    """config.json: every constant of the model stated, under each name a port reads it by
    (docs/export.md), so that no port's default decides anything."""
    return {
        "architectures": ["Grok1ModelForCausalLM"],
        "model_type": "grok-1",
        "auto_map": {"AutoConfig": "configuration_grok1.Grok1Config"},
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_q_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.key_size,
        "num_experts": cfg.num_experts,
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_selected_experts,
        "attn_output_multiplier": cfg.attn_output_multiplier,
        "max_attn_value": 30.0,                # the soft cap, 30 tanh(s / 30)
        "attn_logit_softcapping": 30.0,        # the same, as vLLM and SGLang name it
        "embedding_multiplier_scale": cfg.embedding_multiplier_scale,
        "output_multiplier_scale": cfg.output_multiplier_scale,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",     # the tanh approximation of GELU
        "max_position_embeddings": cfg.sequence_len,
        "tie_word_embeddings": fmt == "hf",
        "pad_token_id": cfg.pad_token,
        "bos_token_id": 1,
        "eos_token_id": cfg.eos_token,
        # The official router: no cap on its logits, top-k gates not renormalised.
        "router_logit_softcapping": 0.0,
        "moe_router_renormalize": False,
        "load_presharded_moe": False,
        "torch_dtype": dtype,
        "use_cache": True,
        # read (without a default) by the Hugging Face port's __init__: training-only settings
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
    }


# A configuration class of our own (no port's code): transformers does not know model_type
# "grok-1", and AutoConfig finds this through auto_map (vLLM, SGLang: --trust-remote-code).
CONFIG_CLASS = '''"""Grok-1's configuration for transformers, written by minigrok's export."""

from transformers import PretrainedConfig


class Grok1Config(PretrainedConfig):
    """Every field is in config.json; these defaults are Grok-1's own."""

    model_type = "grok-1"

    def __init__(self, vocab_size=131072, hidden_size=6144, intermediate_size=32768,
                 num_hidden_layers=64, num_attention_heads=48, num_key_value_heads=8,
                 head_dim=128, num_experts=8, num_experts_per_tok=2,
                 attn_output_multiplier=0.08838834764831845, max_attn_value=30.0,
                 embedding_multiplier_scale=78.38367176906169,
                 output_multiplier_scale=0.5773502691896257, rms_norm_eps=1e-5,
                 rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.intermediate_size, self.num_hidden_layers = intermediate_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = (num_attention_heads,
                                                              num_key_value_heads)
        self.head_dim, self.num_experts = head_dim, num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.attn_output_multiplier, self.max_attn_value = (attn_output_multiplier,
                                                            max_attn_value)
        self.embedding_multiplier_scale = embedding_multiplier_scale
        self.output_multiplier_scale = output_multiplier_scale
        self.rms_norm_eps, self.rope_theta = rms_norm_eps, rope_theta
        self.max_position_embeddings = max_position_embeddings
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)
'''

# The official runner encodes without BOS; LlamaTokenizer would prepend one by default.
TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
                    "add_eos_token": False, "bos_token": "[BOS]", "eos_token": "[EOS]",
                    "pad_token": "[PAD]", "unk_token": "[UNK]", "legacy": True}


def chunks(held, expert, transposed: bool):
    """The exported tensor's float32 values in C order, a few MB at a time.

    held: the checkpoint's array or QuantizedWeight8bit; expert: which of a stacked
    weight's experts; transposed: [in, out] -> [out, in] (then a chunk is a few output
    rows: a slice of the checkpoint's columns, dequantised by the reference's own
    dequantize, which is the definition of the exported values).
    """
    if isinstance(held, QuantizedWeight8bit):
        weight, scales = held
        if expert is not None:
            weight, scales = weight[expert], scales[expert]
        n_in, n_out = weight.shape
        step = max(1, CHUNK_ELEMENTS // n_in)
        for c0 in range(0, n_out, step):
            part = QuantizedWeight8bit(weight[:, c0:c0 + step], scales[:, c0:c0 + step])
            yield dequantize(part).T
        return
    a = np.asarray(held)
    if transposed:
        a = a.T
    rows = max(1, CHUNK_ELEMENTS // max(1, int(np.prod(a.shape[1:]))))
    for r0 in range(0, max(1, a.shape[0]), rows):
        yield a[r0:r0 + rows].astype(np.float32)


def stored_dtype(official: str, dtype: str) -> str:
    """The dtype a tensor is written in: ``dtype``, except the router and the norms, which
    stay float32 as in the release (a few KB a layer): a router rounded to bfloat16 moves
    near-ties between experts (1 choice in 92 on a 4-layer model: docs/export.md)."""
    return "float32" if official.endswith(("router/w", "/scale")) else dtype


def shards(tensors, dtype: str, shard_bytes: int) -> list[list]:
    """The tensors cut into files of at most ``shard_bytes`` (a larger tensor alone)."""
    out, size = [[]], 0
    for t in tensors:
        n = safetensors.nbytes(t[1], stored_dtype(t[2], dtype))
        if out[-1] and size + n > shard_bytes:
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return out


def written_by_export(path) -> bool:
    """Whether folder ``path`` holds only what an export writes (--force replaces only that)."""
    names = set(os.listdir(path))
    expected = {"config.json", INDEX_FILE, "configuration_grok1.py", "tokenizer.model",
                "tokenizer_config.json", "special_tokens_map.json"}
    shards_ = {n for n in names if n.startswith("model-") and n.endswith(".safetensors")}
    return INDEX_FILE in names and names - shards_ <= expected and \
        not any(os.path.islink(os.path.join(path, n)) for n in names)


def export(checkpoint, out, fmt: str = "hf", dtype: str = "bfloat16", shard_gb: float = 5.0,
           force: bool = False, tokenizer=None, progress=None) -> Path:
    """Write checkpoint ``checkpoint`` as a Hugging Face folder ``out``; returns its path.

    ``progress(done_bytes, total_bytes)`` is called as the tensors are written. The folder
    is written under a temporary name and renamed when complete (outputs.replace_dir): an
    interrupted export never looks finished, an existing ``out`` is refused unless
    ``force``, and then replaced only where it is an export.
    """
    if fmt not in FORMATS:
        raise MinigrokError(f"unknown export format {fmt!r}: use {' or '.join(FORMATS)}")
    if dtype not in safetensors.DTYPES:
        raise MinigrokError(f"unknown dtype {dtype!r}: use {', '.join(safetensors.DTYPES)}")
    if not (isinstance(shard_gb, (int, float)) and math.isfinite(shard_gb) and shard_gb > 0):
        raise MinigrokError(f"--shard-gb must be a number of GB above 0, got {shard_gb}")
    ck = open_checkpoint(checkpoint)
    cfg = ck.config
    tokenizer_path = find_tokenizer(tokenizer, ck.root)
    tensors = tensor_map(cfg, fmt)
    files = shards(tensors, dtype, int(shard_gb * 1e9))
    total = sum(safetensors.nbytes(t[1], stored_dtype(t[2], dtype)) for t in tensors)
    _check_space(Path(out), total)

    def fill(tmp: Path):
        done = [0]

        def advance(n):
            done[0] += n
            if progress:
                progress(done[0], total)

        weight_map = {}
        for k, group in enumerate(files, 1):
            name = f"model-{k:05d}-of-{len(files):05d}.safetensors"
            with open(tmp / name, "wb") as f:
                safetensors.write_file(f, [
                    (n, shape, stored_dtype(src, dtype),
                     lambda s=src, e=e, t=t: chunks(ck.params[s], e, t))
                    for n, shape, src, e, t in group], {"format": "pt"}, advance)
            weight_map.update({t[0]: name for t in group})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, fmt, dtype), indent=2)
                                         + "\n")
        (tmp / "configuration_grok1.py").write_text(CONFIG_CLASS)
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
        (tmp / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
        special = {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "pad_token",
                                                     "unk_token")}
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    path = replace_dir(out, fill, force=force, recognise=written_by_export,
                       what="an export minigrok wrote (config.json, safetensors shards, their "
                            "index and the tokenizer files, nothing else)")
    _warn_unloadable(cfg)                  # after the write: an error is never a second line
    return path


def _warn_unloadable(cfg):
    """What some ports cannot load (written anyway: the export is still exact)."""
    width = cfg.num_q_heads * cfg.key_size
    if width != cfg.emb_size:
        warnings.warn(f"num_q_heads x key_size ({width}) is not emb_size ({cfg.emb_size}): the "
                      "Hugging Face port and vLLM derive the head width from the two and cannot "
                      "load this model (SGLang reads head_dim)")
    if not math.isclose(cfg.attn_output_multiplier, cfg.key_size ** -0.5, rel_tol=1e-12):
        warnings.warn(f"attn_output_multiplier {cfg.attn_output_multiplier:g} is not "
                      f"key_size^-1/2: vLLM and SGLang scale the scores by key_size^-1/2 and "
                      "will compute another model")


def _check_space(out: Path, need: int):
    """The disk must hold the export (plus 1%): one line now, not a full disk in an hour."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return                              # the write reports what is wrong with the place
    if free < need * 1.01:
        raise MinigrokError(f"{out}: the export needs {need / 1e9:.1f} GB and {folder} has "
                            f"{free / 1e9:.1f} GB free")


def progress_line(stream):
    """A progress callback printing 'done/total GB, GB/s, ETA' on one updated line."""
    t0, last = time.perf_counter(), [0.0]

    def show(done, total):
        now = time.perf_counter()
        if now - last[0] < 0.5 and done < total:
            return
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        eta = (total - done) / rate if rate else float("inf")
        print(f"\rexport: {done / 1e9:.2f}/{total / 1e9:.2f} GB, {rate / 1e9:.2f} GB/s, "
              f"ETA {eta:.0f} s   ", end="", file=stream, flush=True)
    return show
