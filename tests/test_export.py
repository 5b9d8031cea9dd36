"""The Hugging Face export: every tensor is minigrok's own dequantised tensor (float32 exactly,
bfloat16 and float16 to one rounding), every name and shape is docs/export.md's table, and a
forward pass written from that table alone (tests/hf_forward.py) gives minigrok's logits."""

import dataclasses
import json
import os
import re
import shutil
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import minigrok
from minigrok.errors import MinigrokError
from minigrok.export import hf
from minigrok.formats.checkpoint import open_checkpoint
from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference import quant
from minigrok.reference.config import preset

import hf_forward
from testutil import REPO, run_cli, tokenizer_path

TOKENS = [5, 17, 0, 300, 9, 1000, 77, 0, 3]          # pads (id 0) inside, as the official mask


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    """tiny's structure with 4 query heads per kv head, 3 layers, and heads x key_size equal
    to the width, as the Hugging Face port requires."""
    cfg = dataclasses.replace(preset("tiny"), num_q_heads=8, num_kv_heads=2, num_layers=3,
                              attn_output_multiplier=0.25, vocab_size=2048)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "gqa", cfg, seed=4)


def exported(src, tmp_path, fmt="hf", dtype="float32", shard_gb=5.0):
    return hf.export(src, tmp_path / f"{fmt}-{dtype}", fmt, dtype, shard_gb,
                     tokenizer=tokenizer_path())


def read(folder) -> dict:
    index = json.loads((folder / hf.INDEX_FILE).read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(folder / shard, "numpy") as f:
            for name in f.keys():
                assert index["weight_map"][name] == shard
                out[name] = f.get_tensor(name)
    assert set(out) == set(index["weight_map"])
    return out


def minigrok_tensor(ck, official, expert, transposed):
    """minigrok's own float32 value of an exported tensor: dequantize, pick, transpose."""
    held = ck.params[official]
    if isinstance(held, quant.QuantizedWeight8bit):
        value = quant.dequantize(held)
    else:
        value = np.asarray(held, np.float32)
    if expert is not None:
        value = value[expert]
    return value.T if transposed else value


@pytest.mark.parametrize("fmt", hf.FORMATS)
@pytest.mark.parametrize("which", ["tiny", "gqa"])
def test_every_tensor_is_minigrok_s_own_in_float32_exactly(request, tmp_path, fmt, which):
    src = request.getfixturevalue(f"{which}_dir")
    ck = open_checkpoint(src)
    got = read(exported(src, tmp_path, fmt, "float32", shard_gb=0.02))   # several shards
    table = hf.tensor_map(ck.config, fmt)
    assert {t[0] for t in table} == set(got)
    for name, shape, official, expert, transposed in table:
        assert got[name].dtype == np.float32 and got[name].shape == shape, name
        np.testing.assert_array_equal(got[name], minigrok_tensor(ck, official, expert,
                                                                 transposed), err_msg=name)


@pytest.mark.parametrize("dtype, kind", [("bfloat16", ml_dtypes.bfloat16),
                                         ("float16", np.float16)])
def test_half_precision_is_one_rounding_of_the_float32(tiny_dir, tmp_path, dtype, kind):
    ck = open_checkpoint(tiny_dir)
    got = read(exported(tiny_dir, tmp_path, "hf", dtype))
    for name, _, official, expert, transposed in hf.tensor_map(ck.config, "hf"):
        exact = minigrok_tensor(ck, official, expert, transposed)
        if official.endswith(("router/w", "/scale")):     # kept float32, as released
            assert got[name].dtype == np.float32, name
            np.testing.assert_array_equal(got[name], exact, err_msg=name)
            continue
        assert got[name].dtype == kind, name
        # round to nearest, ties to even, once: what numpy's and ml_dtypes' casts do
        np.testing.assert_array_equal(got[name], exact.astype(kind), err_msg=name)


def documented_table() -> dict:
    """docs/export.md's mapping table: {exported name pattern: (official, shape text)}."""
    rows = {}
    text = (REPO / "docs" / "export.md").read_text()
    for line in text.splitlines():
        cells = [c.strip(" `") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith(("model.", "lm_head")):
            rows[cells[1]] = cells
    return rows


def test_names_and_shapes_are_the_documented_table(gqa_dir):
    rows = documented_table()
    cfg = open_checkpoint(gqa_dir).config
    sizes = {"V": cfg.vocab_size, "D": cfg.emb_size, "F": cfg.ffn_size, "E": cfg.num_experts,
             "H*d": cfg.num_q_heads * cfg.key_size, "K*d": cfg.num_kv_heads * cfg.key_size}
    for fmt in hf.FORMATS:
        for name, shape, official, expert, transposed in hf.tensor_map(cfg, fmt):
            pattern = re.sub(r"\.\d+\.", ".N.", name, count=1)
            pattern = re.sub(r"experts\.\d+\.", "experts.E.", pattern)
            assert pattern in rows, f"{fmt}: {name} is not in docs/export.md's table"
            doc_shape = rows[pattern][3].strip("[]").split(", ")
            assert tuple(sizes[s] for s in doc_shape) == shape, name


@pytest.mark.parametrize("fmt, names", [
    ("hf", ("attn", "moe_block", ("linear", "linear_v", "linear_1"), "scale")),
    ("sglang", ("self_attn", "block_sparse_moe", ("w1", "w3", "w2"), "weight"))])
def test_an_independent_forward_over_the_export_gives_minigrok_s_logits(gqa_dir, tmp_path,
                                                                        fmt, names):
    folder = exported(gqa_dir, tmp_path, fmt, "float32")
    want = hf_forward.logits(folder, TOKENS, names)              # float64, from the table
    got = minigrok.load(gqa_dir).logits(TOKENS)                  # float32, minigrok's model
    # minigrok in float32 against float64: well within the 1e-4 of the largest logit that
    # the model tests allow a float32 forward (tests/test_model.py); 2e-7 measured here
    err = np.abs(got - want).max(-1) / np.abs(want).max(-1)
    assert np.all(err <= 1e-4), err


def test_config_states_every_constant(gqa_dir, tmp_path):
    cfg = open_checkpoint(gqa_dir).config
    c = json.loads((exported(gqa_dir, tmp_path) / "config.json").read_text())
    assert c["max_attn_value"] == c["attn_logit_softcapping"] == 30.0
    assert c["attn_output_multiplier"] == cfg.attn_output_multiplier
    assert c["embedding_multiplier_scale"] == cfg.embedding_multiplier_scale
    assert c["output_multiplier_scale"] == cfg.output_multiplier_scale
    assert (c["rope_theta"], c["rms_norm_eps"], c["tie_word_embeddings"]) == (10000.0, 1e-5, True)
    assert (c["pad_token_id"], c["bos_token_id"], c["eos_token_id"]) == (0, 1, 2)
    assert c["num_experts"] == c["num_local_experts"] == cfg.num_experts
    assert (c["router_logit_softcapping"], c["moe_router_renormalize"]) == (0.0, False)
    assert c["head_dim"] * c["num_attention_heads"] == c["hidden_size"]
    # read without a default by the Hugging Face port's model class
    assert (c["output_router_logits"], c["router_aux_loss_coef"]) == (False, 0.001)


def test_bad_arguments_and_an_existing_out_are_one_line(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("export", "--checkpoint", tiny_dir, "--out", out).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for args, words in ((("--out", out), "already exists; pass --force"),
                        (("--out", tmp_path / "x", "--shard-gb", "0"), "--shard-gb"),
                        (("--out", tmp_path / "x", "--shard-gb", "nan"), "--shard-gb"),
                        (("--out", tmp_path / "x", "--dtype", "int8"), "invalid choice"),
                        (("--out", tiny_dir, "--force"), "is not an export minigrok wrote")):
        r = run_cli("export", "--checkpoint", tiny_dir, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert run_cli("export", "--checkpoint", tiny_dir, "--out", out, "--force").returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no leftovers


def test_a_full_disk_is_refused_before_writing(tiny_dir, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(MinigrokError, match=r"needs 0\.\d GB and .* has 0\.0 GB free"):
        exported(tiny_dir, tmp_path)
    assert not os.listdir(tmp_path)


def test_an_interrupted_export_never_looks_finished(tiny_dir, tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = hf.safetensors.write_file
    monkeypatch.setattr(hf.safetensors, "write_file", failing)
    with pytest.raises(OSError):
        exported(tiny_dir, tmp_path, shard_gb=0.02)
    assert not os.listdir(tmp_path)                         # no OUT, no temporary folder


def test_what_a_port_cannot_load_is_exported_with_a_warning(tiny_dir, gqa_dir, tmp_path):
    # tiny has 16 heads of 16 for a width of 128: the HF port and vLLM derive 8-wide heads
    with pytest.warns(UserWarning, match=r"\(256\) is not emb_size \(128\).*cannot load"):
        exported(tiny_dir, tmp_path / "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exported(gqa_dir, tmp_path / "gqa")
