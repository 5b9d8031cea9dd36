"""Shared fixtures: checkpoints minigrok writes itself, the real tokenizer, a CLI runner."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigrok.config import preset
from minigrok.make_checkpoint import make_checkpoint

REPO = Path(__file__).resolve().parents[1]


def tokenizer_path() -> Path:
    """The real Grok-1 tokenizer: $MINIGROK_TOKENIZER (CI sets it) or ../shared/grok-1."""
    env = os.environ.get("MINIGROK_TOKENIZER")
    path = Path(env) if env else REPO.parent / "shared" / "grok-1" / "tokenizer.model"
    if not path.is_file():
        pytest.fail(f"Grok-1 tokenizer.model not found at {path}: set MINIGROK_TOKENIZER")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The real ``tiny`` preset (12 layers, D=128, full vocabulary), seed 0."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"))


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """A cheaper checkpoint for many-example tests: tiny's structure, 1024 tokens, 3 layers."""
    cfg = dataclasses.replace(preset("tiny"), vocab_size=1024, num_layers=3)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", cfg, seed=1)


def run_cli(*args, env=None, timeout=300):
    """Run ``python -m minigrok ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "minigrok", *map(str, args)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
