"""Fixtures of the oracle suite: the official-code worker and the checkpoints it reads.

Without the official source every test here is skipped with one clear reason (never
passed); with it, the worker starts once per session (and its venv is built on first use).
"""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import settings

from minigrok.formats import make_checkpoint as mc
from minigrok.reference.config import preset
from oracle_checks import MEASURED
from oracle_harness import SRC, Oracle, source_missing
from testutil import tokenizer_path

_ORACLE = {}


@pytest.fixture(scope="session")
def oracle():
    reason = source_missing()
    if reason:
        pytest.skip(reason)
    # The quick profile compiles the official code with LLVM optimisations off (most of its
    # time is compilation); oracle-deep, with many cases per compilation, keeps XLA's defaults.
    o = Oracle(fast_compile=settings.default.max_examples < 1000)
    _ORACLE["worker"] = o
    yield o
    o.close()


@pytest.fixture(scope="session")
def tokenizer() -> Path:
    """The real Grok-1 tokenizer, which the official runner and minigrok both read."""
    return tokenizer_path()


@pytest.fixture(scope="session")
def gqa_dir(tmp_path_factory):
    """13 layers (sorted file order 0, 1, 10, 11, 12, 2, ...), 4 query heads per kv head."""
    cfg = dataclasses.replace(preset("tiny"), num_layers=13, num_kv_heads=4, vocab_size=4096)
    return mc.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "gqa", cfg, seed=3)


@pytest.fixture(scope="session")
def lively_dir(tmp_path_factory):
    """tiny's structure (12 layers, 16 q / 8 kv heads, full vocabulary) with full-size post
    norms: the layers, not the input embedding, decide the next token, so greedy text
    changes from token to token. (The default 0.1 post norms keep bfloat16 routing flips
    rare, at the price of greedy text that mostly repeats; see make_checkpoint.POST_NORM.)"""
    cfg = dataclasses.replace(preset("tiny"), sequence_len=128)
    return mc.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "lively", cfg, seed=5,
                              post_norm=1.0)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """The built-in storyteller model (trained by `minigrok train`), in the official format."""
    from minigrok.api import BUILTIN
    from minigrok.formats import compact
    cfg, vocab, tensors = compact.load(BUILTIN)
    return mc.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "trained", cfg,
                               compact.expand(cfg, vocab, tensors))


@pytest.fixture(scope="session")
def tiny_gen_dir(tmp_path_factory):
    """The tiny preset's weights (seed 0) with a 128-token context, for the runner's loop."""
    cfg = dataclasses.replace(preset("tiny"), sequence_len=128)
    return mc.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny128", cfg, seed=0)


def pytest_terminal_summary(terminalreporter):
    """The measured errors (the README's table) and where the official code spent its time."""
    if "worker" in _ORACLE:
        o = _ORACLE["worker"]
        tr = terminalreporter
        tr.section("oracle suite: measured error (worst) against tolerance")
        for name in sorted(MEASURED):
            m = MEASURED[name]
            extra = f", {m['what']}: {m['excluded']}" if m["excluded"] else ""
            exact = f", weights bit-exact: {m['exact']}" if "exact" in m else ""
            tr.write_line(f"{name:40s} n={m['n']:<5d} worst={m['worst']:.3g} tol={m['tol']:.3g}"
                          f"{extra}{exact}")
        total = sum(o.seconds.values())
        tr.write_line(f"official code ({SRC}): {o.calls} calls, {total:.0f} s: " + ", ".join(
            f"{k} {v:.0f} s" for k, v in sorted(o.seconds.items(), key=lambda kv: -kv[1])))
    elif source_missing():
        terminalreporter.write_line(source_missing())
