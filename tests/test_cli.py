"""The command line, run as a user runs it: ``python -m minigrok ...`` in a fresh process.

Each run costs a Python start-up, so the cases are few and each checks several things.
"""

import json
import re

import numpy as np
import pytest

import minigrok
from minigrok.api import BUILTIN
from minigrok.engine import native
from minigrok.formats import compact
from minigrok.formats.checkpoint import EMBEDDINGS, open_checkpoint
from minigrok.training import stories

from testutil import run_cli, tokenizer_path

TIMING = re.compile(r"^\[(\d+) prompt tokens: ([\d.]+|-) tok/s, (\d+) generated tokens: "
                    r"([\d.]+|-) tok/s, cpu\]$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tokenizer from the environment, a private cache, and never the network."""
    return {"MINIGROK_TOKENIZER": str(tokenizer_path()),
            "MINIGROK_CACHE": str(tmp_path_factory.mktemp("cache")),
            "MINIGROK_NO_DOWNLOAD": "1"}


def test_logits_writes_float32_equal_to_the_api(tiny_dir, tmp_path, env):
    out = tmp_path / "f.npy"
    r = run_cli("logits", "--checkpoint", tiny_dir, "--tokens", "5,17,300", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (3, 131072)
    expected = minigrok.load(tiny_dir).logits([5, 17, 300])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))          # no temporary file left behind


def test_generate_from_token_ids(tiny_dir, env):
    r = run_cli("generate", "--checkpoint", tiny_dir, "--prompt-tokens", "5,17",
                "--max-new-tokens", "4", env=env)
    assert r.returncode == 0, r.stderr
    timing = TIMING.findall(r.stderr)
    assert len(timing) == 1, r.stderr
    n_prompt, _, n_new, _ = timing[0]
    assert n_prompt == "2" and 1 <= int(n_new) <= 4
    # stdout is the text of the greedy continuation, as the API produces it
    m = minigrok.load(tiny_dir, tokenizer=tokenizer_path())
    assert r.stdout == "".join(m.generate([5, 17], max_new_tokens=4)) + "\n"
    assert len(list(m.generate_ids([5, 17], max_new_tokens=4))) == int(n_new)


def test_generate_from_text_prompt(tiny_dir, env):
    r = run_cli("generate", "--checkpoint", tiny_dir, "--prompt", "Hello", "--max-new-tokens", "3",
                env=env)
    assert r.returncode == 0, r.stderr
    timing = TIMING.findall(r.stderr)
    assert len(timing) == 1 and timing[0][0] == "1", r.stderr     # "Hello" is one token
    m = minigrok.load(tiny_dir, tokenizer=tokenizer_path())
    assert r.stdout == "".join(m.generate("Hello", max_new_tokens=3)) + "\n"


def test_bench_json_holds_the_promised_figures(small_dir, env):
    # small_dir: 3 layers, so the one-more-layer figures are there too.
    r = run_cli("bench", "--checkpoint", small_dir, "--prompt-len", "3", "--new-tokens", "4",
                "--json", env=env)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    b = json.loads(line)
    for key in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "peak_anon_mb",
                "weight_gb_per_token", "gemv_gb_s", "widen_gb_s", "layer_decode_s",
                "bandwidth_efficiency", "int8_gemv_gb_s", "dequant_matmul_gb_s",
                "kernel_efficiency", "read_gb_s", "token_efficiency"):
        assert isinstance(b[key], (int, float)), key
    assert b["num_layers"] == 3 and b["prompt_len"] == 3 and b["new_tokens"] == 4
    assert min(b["load_s"], b["prefill_tok_s"], b["decode_tok_s"], b["gemv_gb_s"],
               b["widen_gb_s"], b["read_gb_s"]) > 0
    # the 1 GiB read buffer is the yardstick's, not minigrok's: it is not counted
    assert 0 < b["peak_anon_mb"] <= b["peak_rss_mb"] < 1024
    assert b["cpu_kernel"] == ("native" if native.native_kernel() else "numpy")
    # Every efficiency is against the raw read bandwidth, as the README defines them (each
    # figure is rounded to 4 significant digits):
    assert b["kernel_efficiency"] == pytest.approx(b["int8_gemv_gb_s"] / b["read_gb_s"], rel=3e-3)
    # one layer: its int8 bytes at the read bandwidth over the measured layer time;
    floor = b["layer_gb"] / b["read_gb_s"]
    assert b["bandwidth_efficiency"] == pytest.approx(floor / b["layer_decode_s"], rel=3e-3)
    # a whole token: its int8 and embedding bytes at the read bandwidth over its time.
    per_token = (b["weight_gb_per_token"] + b["embedding_gb_per_token"]) / b["read_gb_s"]
    assert b["token_efficiency"] == pytest.approx(per_token * b["decode_tok_s"], rel=3e-3)
    assert b["weight_gb_per_token"] == pytest.approx(3 * b["layer_gb"], rel=2e-3)


def test_tokenize(env):
    r = run_cli("tokenize", "Hello world", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "11770,1135"
    assert "Hello" in lines[1] and "world" in lines[2]


def test_default_checkpoint_is_the_trained_model_written_to_the_cache(tmp_path, env):
    """With no --checkpoint, generate writes the built-in model (the committed compact form,
    expanded into the official format) into the cache once, says what it is, and tells a
    story."""
    cache = tmp_path / "cache"
    r = run_cli("generate", "--prompt", "Once upon a time", "--max-new-tokens", "40",
                env=dict(env, MINIGROK_CACHE=str(cache)))
    assert r.returncode == 0, r.stderr
    [folder] = cache.glob("storyteller-*")
    cfg, vocab, tensors = compact.load(BUILTIN)
    ck = open_checkpoint(folder)
    assert ck.config == cfg
    np.testing.assert_array_equal(ck.params[EMBEDDINGS], compact.expand(cfg, vocab, tensors)[EMBEDDINGS])
    assert re.search(r"^minigrok: using the built-in storyteller .*trained .*stories",
                     r.stderr, re.M), r.stderr
    assert len(TIMING.findall(r.stderr)) == 1
    words = re.findall(r"[A-Za-z']+", r.stdout)
    assert len(words) >= 20
    assert sum(w.lower() in stories.words() for w in words) >= 0.9 * len(words), r.stdout
    # the second run finds it in the cache: no "writing" line
    r = run_cli("generate", "--prompt-tokens", "5,17", "--max-new-tokens", "2",
                env=dict(env, MINIGROK_CACHE=str(cache)))
    assert r.returncode == 0 and "writing" not in r.stderr, r.stderr


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("minigrok"), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


GEN = ("generate", "--checkpoint", "{tiny}")

ERROR_CASES = {
    "empty prompt": (GEN + ("--prompt", ""), ["empty prompt"]),
    "token past the vocabulary": (GEN + ("--prompt-tokens", "5,131072"), ["131072", "vocabulary"]),
    "negative token": (("logits", "--checkpoint", "{tiny}", "--tokens", "5,-1", "--out", "{out}"),
                       ["-1", "vocabulary"]),
    "non-integer token": (GEN + ("--prompt-tokens", "5,abc"), ["integers", "abc"]),
    "negative temperature": (GEN + ("--prompt-tokens", "5", "--temperature", "-0.5"),
                             ["temperature"]),
    "top-p 0": (GEN + ("--prompt-tokens", "5", "--top-p", "0"), ["top_p"]),
    "top-p 1.5": (GEN + ("--prompt-tokens", "5", "--top-p", "1.5"), ["top_p", "1.5"]),
    "max-new-tokens -1": (GEN + ("--prompt-tokens", "5", "--max-new-tokens", "-1"),
                          ["max_new_tokens", "-1"]),
    "max-new-tokens 10**6": (GEN + ("--prompt-tokens", "5", "--max-new-tokens", str(10**6)),
                             ["max_new_tokens", "1000000"]),
    "unknown device": (GEN + ("--prompt-tokens", "5", "--device", "tpu"), ["tpu"]),
    "bad GPU list": (GEN + ("--prompt-tokens", "5", "--device", "cuda:0,x"), ["cuda:0,x"]),
    "GPU named twice": (GEN + ("--prompt-tokens", "5", "--device", "cuda:1,1"), ["cuda:1,1"]),
    "gpu-memory on the CPU": (GEN + ("--prompt-tokens", "5", "--gpu-memory", "4"),
                              ["--gpu-memory", "cuda"]),
    "gpu-memory 0": (("bench", "--checkpoint", "{tiny}", "--device", "cuda", "--gpu-memory", "0"),
                     ["--gpu-memory", "0"]),
    "missing tokenizer": (GEN + ("--prompt", "Hello", "--tokenizer", "/nonexistent"),
                          ["tokenizer", "/nonexistent"]),
    "missing checkpoint": (("generate", "--checkpoint", "{missing}", "--prompt-tokens", "5"),
                           ["no such checkpoint"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_line_exit_2(case, tiny_dir, tmp_path, env):
    args, words = ERROR_CASES[case]
    fill = {"tiny": tiny_dir, "out": tmp_path / "never.npy", "missing": tmp_path / "nope"}
    r = run_cli(*(a.format(**fill) for a in args), env=env)
    assert_one_line_error(r, *words)
    assert not (tmp_path / "never.npy").exists()


def test_cuda_without_cupy_is_a_one_line_error(tiny_dir, env):
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed here, so --device cuda is not an error")
    r = run_cli(*GEN[:2], tiny_dir, "--prompt-tokens", "5", "--device", "cuda", env=env)
    assert_one_line_error(r, "CuPy")
