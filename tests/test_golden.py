"""Golden vectors (issue 6): the file, its determinism, verify, compare, and the official code.

One golden file of the tiny preset is computed once per module; the CLI runs cost a Python
start-up each, so they are few and each checks several things.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minigrok
from minigrok import golden
from minigrok.formats.checkpoint import (CKPT_DIR, EMBEDDINGS, FINAL_NORM, model_params,
                                        open_checkpoint)
from minigrok.reference import attention as attention_module
from minigrok.reference import moe as moe_module
from minigrok.reference import quant

from testutil import REPO, run_cli

# A pad inside the sequence (id 0), common and rare tokens, the EOS id: the tokens of the
# documented example file (docs/golden-format.md) and of test_official.py.
TOKENS = [5, 17, 0, 300, 9, 1000, 77, 12345, 3, 4, 2, 131071, 8, 9, 10, 11]
DOC = REPO / "docs" / "golden-format.md"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(checkpoint, its params, the golden arrays of TOKENS, the file they were written to)."""
    ck = open_checkpoint(tiny_dir)
    params = model_params(ck.params, ck.config.num_layers)
    arrays = golden.make(tiny_dir, TOKENS)
    path = golden.write(tiny_dir.parent / "tiny-golden.npz", arrays)
    return ck, params, arrays, path


def expected_names(num_layers):
    names = ["tokens", "embeddings"]
    names += [f"layer_{i:02d}/{s}" for i in range(num_layers) for s in golden.LAYER_STAGES]
    return names + ["final_norm", "logits", "meta"]


def test_file_holds_every_stage_in_model_order(tiny):
    ck, _, arrays, path = tiny
    cfg = ck.config
    T, D, H, K, d, E = (len(TOKENS), cfg.emb_size, cfg.num_q_heads, cfg.num_kv_heads,
                        cfg.key_size, cfg.num_experts)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == [n + ".npy" for n in expected_names(cfg.num_layers)]
    assert {(i.date_time, i.compress_type) for i in infos} == {((1980, 1, 1, 0, 0, 0), 0)}

    f = np.load(path, allow_pickle=False)                  # plain numpy reads it
    shapes = {"embeddings": (T, D), "attn_in": (T, D), "q": (T, H, d), "k": (T, K, d),
              "v": (T, K, d), "attn_probs": (H, T, T), "attn_context": (T, H * d),
              "attn_out": (T, D), "after_attn": (T, D), "moe_in": (T, D),
              "router_probs": (T, E), "expert_ids": (T, 2), "expert_gates": (T, 2),
              "moe_out": (T, D), "layer_out": (T, D), "final_norm": (T, D),
              "logits": (T, cfg.vocab_size)}
    for name in f.files:
        stage = name.rsplit("/", 1)[-1]
        if name == "meta":
            assert f[name].dtype == np.uint8 and f[name].ndim == 1
        elif name == "tokens" or stage == "expert_ids":
            assert f[name].dtype == np.dtype("<i4")
        else:
            assert f[name].dtype == np.dtype("<f4") and f[name].shape == shapes[stage], name
    assert f["tokens"].tolist() == TOKENS

    meta = json.loads(f["meta"].tobytes().decode())
    assert meta["format"] == "minigrok-golden" and meta["minigrok_version"] == minigrok.__version__
    assert meta["config"] == dataclasses.asdict(cfg) and meta["layers"] == list(range(12))
    assert meta["checkpoint_fingerprint"] == golden.fingerprint(ck.root, cfg)
    assert meta["tolerances"]["float32"]["logits"] == golden.TOLERANCES["float32"]["default"]

    # Recording changes nothing: the logits are those of the public API, to the last bit.
    assert np.array_equal(f["logits"], minigrok.load(ck.root).logits(TOKENS))
    # Top-k in the official order: descending probability, gates are those probabilities.
    for i in range(cfg.num_layers):
        p, ids = f[f"layer_{i:02d}/router_probs"], f[f"layer_{i:02d}/expert_ids"]
        gates = f[f"layer_{i:02d}/expert_gates"]
        assert np.array_equal(gates, np.take_along_axis(p, ids, -1))
        assert (gates[:, 0] >= gates[:, 1]).all()
        assert (gates[:, 1:2] >= np.where(np.eye(E, dtype=bool)[ids].any(1), -1, p)).all()


def reference_port(ck, tokens):
    """A plain float64 Grok-1 written from docs/golden-format.md, as a porter would, dumping
    its intermediates under the golden names. Shares nothing with minigrok's forward pass
    but the dequantisation (int8 x bf16 scale, exact in float32 and float64)."""
    cfg, P = ck.config, ck.params
    H, K, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size

    def w(name):
        v = P[name]
        return quant.dequantize(v).astype(np.float64) if hasattr(v, "scales") else \
            np.asarray(v, np.float64)

    def norm(x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w(name)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    tokens = np.asarray(tokens)
    T, pos = len(tokens), np.arange(len(tokens))
    angle = (pos[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d))
    angle = np.concatenate([angle, angle], -1)[:, None, :]                  # [T, 1, d]

    def rope(x):                                                            # rotate-half
        return x * np.cos(angle) + np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1) \
            * np.sin(angle)

    kv_of = np.arange(H) // (H // K)                                        # head h -> kv head
    visible = (pos[None, :] <= pos[:, None]) & (tokens[None, :] != cfg.pad_token)
    emb = w(EMBEDDINGS)
    h = emb[tokens] * cfg.embedding_multiplier_scale
    out = {"tokens": tokens, "embeddings": h}
    for i in range(cfg.num_layers):
        L = f"transformer/decoder_layer_{i}/"
        A = L + "multi_head_attention/"
        x = norm(h, L + "rms_norm/scale")
        q = rope((x @ w(A + "query/w")).reshape(T, H, d))
        k = rope((x @ w(A + "key/w")).reshape(T, K, d))
        v = (x @ w(A + "value/w")).reshape(T, K, d)
        s = np.einsum("thd,shd->hts", q, k[:, kv_of]) * cfg.attn_output_multiplier
        s = np.where(visible, 30 * np.tanh(s / 30), -1e30)
        probs = softmax(s)                                                  # [H, T, T]
        context = np.einsum("hts,shd->thd", probs, v[:, kv_of]).reshape(T, H * d)
        a = context @ w(A + "linear/w")
        after = h + norm(a, L + "rms_norm_1/scale")
        m_in = norm(after, L + "rms_norm_2/scale")
        rp = softmax(m_in @ w(L + "router/w"))
        ids = np.argsort(-rp, axis=-1, kind="stable")[:, :cfg.num_selected_experts]
        gates = np.take_along_axis(rp, ids, -1)
        w1, wv, w2 = w(L + "moe/linear/w"), w(L + "moe/linear_v/w"), w(L + "moe/linear_1/w")
        moe = np.zeros_like(h)
        for t in range(T):
            for e, g in zip(ids[t], gates[t]):
                u = m_in[t] @ w1[e]
                gelu = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
                moe[t] += g * ((gelu * (m_in[t] @ wv[e])) @ w2[e])
        h = after + norm(moe, L + "rms_norm_3/scale")
        out.update({f"layer_{i:02d}/{n}": v_ for n, v_ in zip(golden.LAYER_STAGES, (
            x, q, k, v, probs, context, a, after, m_in, rp, ids, gates, moe, h))})
    out["final_norm"] = norm(h, FINAL_NORM)
    out["logits"] = out["final_norm"] @ emb.T * cfg.output_multiplier_scale
    return out


def test_an_independent_float64_port_of_the_documented_format_agrees(tiny):
    # Checks the documented meaning of every array (shapes, head order, which norm where)
    # and the float32 tolerances: minigrok in float32 against exact arithmetic.
    ck, _, arrays, _ = tiny
    rows = golden.compare(arrays, reference_port(ck, TOKENS), "float32")
    assert len(rows) == len(arrays) - 1 and golden.first_failure(rows) is None
    assert {r["status"] for r in rows} == {"ok"}
    assert max(r["rel"] for r in rows) < 1e-5            # measured 1.5e-6 at most


def test_documented_command_reproduces_the_file_byte_for_byte(tiny, tmp_path):
    # The one command in docs/golden-format.md, run as written in a fresh directory, gives
    # exactly the bytes of the file computed in this process from another copy of the
    # same checkpoint (same machine: see the docs for what else the bytes depend on).
    _, _, _, path = tiny
    command = next(line for line in DOC.read_text().splitlines()
                   if "make-checkpoint --preset tiny" in line and "golden --checkpoint" in line)
    command = command.replace("python -m minigrok", f"{sys.executable} -m minigrok")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    made = tmp_path / "tiny-golden.npz"
    assert made.read_bytes() == path.read_bytes()
    r = run_cli("golden", "verify", made, "--checkpoint", tmp_path / "tiny-ckpt")
    assert r.returncode == 0 and r.stdout.startswith(f"{made}: ok, 172 arrays"), r.stdout + r.stderr
    assert not list(tmp_path.glob(".*partial*"))


def test_verify_fails_on_a_perturbed_file_and_names_the_array(tiny, tmp_path):
    ck, _, arrays, _ = tiny
    assert golden.verify(tiny[3], ck.root)[0]
    bad = dict(arrays)
    m = bad["layer_05/moe_out"] = arrays["layer_05/moe_out"].copy()
    t, c = np.unravel_index(np.abs(m).argmin(), m.shape)       # not the largest entry
    m[t, c] += np.float32(1e-3) * np.abs(m).max()
    golden.write(tmp_path / "bad.npz", bad)
    r = run_cli("golden", "verify", tmp_path / "bad.npz", "--checkpoint", ck.root)
    assert r.returncode == 1, r.stderr
    assert re.fullmatch(rf".*first divergence at layer_05/moe_out: relative error 0\.001 > "
                        rf"tolerance 0\.0001 .*worst at \[{t}, {c}\]\)\n", r.stdout), r.stdout

    # An expert id swapped for one that is far from a tie is a divergence too.
    bad = dict(arrays)
    ids = bad["layer_08/expert_ids"] = arrays["layer_08/expert_ids"].copy()
    p = arrays["layer_08/router_probs"][2]
    ids[2, 1] = int(np.argmin(p))
    golden.write(tmp_path / "bad.npz", bad)
    ok, line = golden.verify(tmp_path / "bad.npz", ck.root)
    assert not ok and "first divergence at layer_08/expert_ids: 1 of 32 entries" in line, line


def test_layers_option_limits_the_dump_and_verifies(tiny, tmp_path):
    ck, _, arrays, _ = tiny
    out = tmp_path / "part.npz"
    r = run_cli("golden", "--checkpoint", ck.root, "--tokens", ",".join(map(str, TOKENS)),
                "--out", out, "--layers", "2-3")
    assert r.returncode == 0, r.stderr
    part = golden.read(out)
    assert [n for n in part if n.startswith("layer_")] == \
        [f"layer_{i:02d}/{s}" for i in (2, 3) for s in golden.LAYER_STAGES]
    assert part["meta"]["layers"] == [2, 3]
    for name, a in part.items():                   # same numbers as the full dump
        if name != "meta":
            assert np.array_equal(a, arrays[name]), name
    ok, line = golden.verify(out, ck.root)
    assert ok and line.startswith(f"{out}: ok, 32 arrays within tolerance"), line


def test_compare_names_the_altered_stage(tiny, tmp_path):
    _, _, arrays, path = tiny
    altered = dict(arrays)
    altered["layer_07/attn_probs"] = arrays["layer_07/attn_probs"] * np.float32(1.001)
    golden.write(tmp_path / "altered.npz", altered)
    r = run_cli("golden", "compare", path, tmp_path / "altered.npz")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    rows = [line for line in lines[1:] if re.match(r"(tokens|embeddings|layer_|final_norm|logits)",
                                                   line)]
    assert len(rows) == len(arrays) - 1                        # every shared array
    assert [line.split()[0] for line in rows if not line.endswith("  ok")] == \
        ["layer_07/attn_probs"]
    assert lines[-1].startswith("first failing stage: layer_07/attn_probs: relative error "
                                "0.001 > tolerance 0.0001")


def permuted_sorted(layers):
    """params["layers"] in checkpoint-file order (0, 1, 10, 11, 2, ...): the classic bug."""
    order = sorted(range(len(layers)), key=str)
    return [layers[i] for i in order]


def interleaved_rope(x, positions):
    """RoPE on interleaved pairs (2i, 2i+1) instead of Grok-1's halves: a real port bug."""
    d = x.shape[-1]
    phase = positions[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)       # [T, d/2]
    c, s = np.cos(phase)[:, None, :], np.sin(phase)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    return out


@pytest.mark.parametrize("bug, first", [
    ("layer order", "layer_02/attn_in"),          # layer 10's weights run as layer 2
    ("renormalised gates", "layer_00/expert_gates"),
    ("extra multiplier", "layer_00/attn_probs"),   # 1/sqrt(d) applied twice
    ("interleaved rope", "layer_00/q"),
])
def test_compare_finds_where_a_buggy_port_first_diverges(tiny, monkeypatch, bug, first):
    ck, params, arrays, _ = tiny
    cfg = ck.config
    if bug == "layer order":
        params = dict(params, layers=permuted_sorted(params["layers"]))
    elif bug == "renormalised gates":
        route = moe_module.route

        def renormalised(x, router, k):
            probs, ids, gates = route(x, router, k)
            return probs, ids, gates / gates.sum(-1, keepdims=True)
        monkeypatch.setattr(moe_module, "route", renormalised)
    elif bug == "extra multiplier":
        cfg = dataclasses.replace(cfg, attn_output_multiplier=cfg.attn_output_multiplier ** 2)
    else:
        monkeypatch.setattr(attention_module, "apply_rope", interleaved_rope)
    port = golden.trace_arrays(params, cfg, TOKENS)
    rows = golden.compare(arrays, port)
    bad = golden.first_failure(rows)
    assert bad is not None and bad["name"] == first, golden.table(rows)
    assert all(r["status"] == "ok" for r in rows[:rows.index(bad)])


def test_expert_ids_near_ties_are_reported_not_failed():
    # Two experts whose expected probabilities differ by 0.5% (relative): a bfloat16 port
    # may pick either; a float32 port should not. Far from a tie, a swap is a failure.
    probs = np.array([[0.5, 0.2, 0.199, 0.101, 0, 0, 0, 0]], np.float32)
    expected = {"layer_00/router_probs": probs, "layer_00/expert_ids": np.array([[0, 1]])}
    near = {"layer_00/router_probs": probs, "layer_00/expert_ids": np.array([[0, 2]])}
    far = {"layer_00/router_probs": probs, "layer_00/expert_ids": np.array([[0, 3]])}
    assert golden.compare(expected, near, "bfloat16")[1]["status"] == "tie"
    assert golden.compare(expected, near, "float32")[1]["status"] == "FAIL"
    row = golden.compare(expected, far, "bfloat16")[1]
    assert row["status"] == "FAIL" and "expert 3, expected 1" in row["note"]


def test_fingerprint_covers_the_config_and_the_file_ends(small_dir, tmp_path):
    cfg = open_checkpoint(small_dir).config
    copy = Path(shutil.copytree(small_dir, tmp_path / "copy"))
    assert golden.fingerprint(copy, cfg) == golden.fingerprint(small_dir, cfg)
    assert golden.fingerprint(copy, dataclasses.replace(cfg, pad_token=1)) != \
        golden.fingerprint(small_dir, cfg)
    f = copy / CKPT_DIR / "tensor00001_000"
    f.write_bytes(f.read_bytes()[:-1] + b"!")
    assert golden.fingerprint(copy, cfg) != golden.fingerprint(small_dir, cfg)

    # It reads 2 MiB per file whatever the size (a sparse 1 GiB file here), so the 318 GB
    # checkpoint costs 1.5 GB of reads; a change deep inside a file is verify's to catch.
    big = tmp_path / "big"
    (big / CKPT_DIR).mkdir(parents=True)
    with open(big / CKPT_DIR / "tensor00000_000", "wb") as f:
        f.truncate(1 << 30)
    before = golden.fingerprint(big, cfg)
    for offset, changes in ((1 << 29, False), ((1 << 30) - 5, True)):
        with open(big / CKPT_DIR / "tensor00000_000", "r+b") as f:
            f.seek(offset)
            f.write(b"\x01")
        assert (golden.fingerprint(big, cfg) != before) == changes
        before = golden.fingerprint(big, cfg)


def test_cli_mistakes_are_one_line_and_exit_2(tiny, tmp_path):
    ck, _, _, path = tiny
    out = tmp_path / "never.npz"
    for args, message in [
        (("golden", "--checkpoint", ck.root, "--tokens", "5,17", "--out", out, "--layers", "3-12"),
         "--layers 3-12: need 0 <= A <= B < 12"),
        (("golden", "--checkpoint", ck.root, "--tokens", "5,131072", "--out", out),
         "token id 131072 is outside the vocabulary"),
        (("golden", "verify", ck.root / "config.json", "--checkpoint", ck.root),
         "not an .npz file"),
        (("golden", "compare", path), "give two files"),
    ]:
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and not r.stdout
    assert not list(tmp_path.iterdir())                   # nothing written, not even partly


SRC = Path(os.environ.get("GROK1_SRC", Path.home() / ".cache/minigrok/grok-1"))
VENV = Path(os.environ.get("MINIGROK_ORACLE_VENV", Path.home() / ".cache/minigrok/oracle-venv"))


@pytest.mark.skipif(not (SRC / "model.py").is_file() or not (VENV / "bin" / "python").exists(),
                    reason=f"official source ({SRC}) or oracle venv ({VENV}) missing: see "
                           "tests/oracle/setup_venv.sh")
def test_golden_logits_agree_with_the_official_code(tiny, tmp_path):
    # The official code computes in bfloat16: the golden logits land within the bfloat16
    # tolerance of its output (measured 0.3% of the largest logit) and pick the same tokens.
    ck, _, arrays, _ = tiny
    out = tmp_path / "official.npy"
    subprocess.run([str(VENV / "bin" / "python"), str(REPO / "tests/oracle/official_logits.py"),
                    "--checkpoint", str(ck.root), "--tokens", ",".join(map(str, TOKENS)),
                    "--out", str(out), "--src", str(SRC)], check=True, capture_output=True,
                   timeout=600)
    official = {"tokens": np.asarray(TOKENS), "logits": np.load(out)}
    (row,) = [r for r in golden.compare(arrays, official, "bfloat16") if r["name"] == "logits"]
    assert row["status"] == "ok" and row["rel"] < 0.01, row
    assert (official["logits"].argmax(-1) == arrays["logits"].argmax(-1)).all()
