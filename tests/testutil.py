"""Helpers the test files import by name (``from testutil import ...``).

They live here rather than in conftest.py: tests/oracle has a conftest.py of its own, and two
modules named ``conftest`` cannot both be imported by that name.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tokenizer_path() -> Path:
    """The real Grok-1 tokenizer: $MINIGROK_TOKENIZER (CI sets it) or ../shared/grok-1."""
    env = os.environ.get("MINIGROK_TOKENIZER")
    path = Path(env) if env else REPO.parent / "shared" / "grok-1" / "tokenizer.model"
    if not path.is_file():
        pytest.fail(f"Grok-1 tokenizer.model not found at {path}: set MINIGROK_TOKENIZER")
    return path


def run_cli(*args, env=None, timeout=300):
    """Run ``python -m minigrok ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "minigrok", *map(str, args)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@dataclass
class OfficialQW:
    """Stand-in for the official ``__main__.QuantizedWeight8bit`` dataclass: register it as
    ``__main__.QuantizedWeight8bit`` (what the official checkpoint.py does) and ``pickle.dumps``
    writes what the official writer writes."""

    weight: object
    scales: object


OfficialQW.__name__ = OfficialQW.__qualname__ = "QuantizedWeight8bit"
OfficialQW.__module__ = "__main__"
