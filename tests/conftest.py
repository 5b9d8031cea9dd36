"""Shared fixtures: checkpoints minigrok writes itself (helpers to import: testutil.py)."""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import settings

from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import preset

# The default run ("repeatable") draws the same hypothesis examples every time: a red CI is
# then a change's doing, never a newly drawn case (those are found by exploring, below).
# `--hypothesis-profile=explore` draws new examples on every run, as many as the default;
# `--hypothesis-profile=oracle-deep` draws new ones too and is the thorough local run: the
# oracle suite (tests/oracle) scales its examples by max_examples / 100, i.e. 10x; tests
# with their own max_examples keep it.
settings.register_profile("explore")
settings.register_profile("oracle-deep", max_examples=1000, deadline=None)
settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The real ``tiny`` preset (12 layers, D=128, full vocabulary), seed 0."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"))


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """A cheaper checkpoint for many-example tests: tiny's structure, 1024 tokens, 3 layers."""
    cfg = dataclasses.replace(preset("tiny"), vocab_size=1024, num_layers=3)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", cfg, seed=1)
