"""minigrok's logits against the official Grok-1 JAX code, run for real (issue 3 acceptance).

Needs the official source (GROK1_SRC, default ~/.cache/minigrok/grok-1) and the oracle venv
(tests/oracle/setup_venv.sh). Without them these tests are reported as skipped, never as
passed; .ci/run builds the venv whenever the source is present. The full hypothesis suite
against the official modules lives in its own issue; this is the end-to-end check.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import minigrok

SRC = Path(os.environ.get("GROK1_SRC", Path.home() / ".cache/minigrok/grok-1"))
VENV = Path(os.environ.get("MINIGROK_ORACLE_VENV", Path.home() / ".cache/minigrok/oracle-venv"))
SCRIPT = Path(__file__).parent / "oracle" / "official_logits.py"

pytestmark = pytest.mark.skipif(
    not (SRC / "model.py").is_file() or not (VENV / "bin" / "python").exists(),
    reason=f"official source ({SRC}) or oracle venv ({VENV}) missing: see tests/oracle/setup_venv.sh")

# A pad inside the sequence (id 0), common and rare tokens, the EOS id.
TOKENS = [5, 17, 0, 300, 9, 1000, 77, 12345, 3, 4, 2, 131071, 8, 9, 10, 11]


def official_logits(checkpoint, tokens, tmp_path, *extra):
    out = tmp_path / "official.npy"
    subprocess.run([str(VENV / "bin" / "python"), str(SCRIPT), "--checkpoint", str(checkpoint),
                    "--tokens", ",".join(map(str, tokens)), "--out", str(out), "--src", str(SRC),
                    *extra], check=True, capture_output=True, timeout=600)
    return np.load(out).astype(np.float64)


def agreement(official, ours):
    """(max |difference| / max |official logit|, the lowest per-position correlation)."""
    err = np.abs(official - ours).max() / np.abs(official).max()
    corr = min(np.corrcoef(official[t], ours[t])[0, 1] for t in range(len(official)))
    return err, corr


def test_tiny_logits_match_the_official_bfloat16_run(tiny_dir, tmp_path):
    # The official code runs in bfloat16: a faithful float32 port lands at ~0.5% of the
    # largest logit with per-position correlation ~0.999997 (measured 0.46%, 0.9999966).
    official = official_logits(tiny_dir, TOKENS, tmp_path)
    ours = minigrok.load(tiny_dir).logits(TOKENS).astype(np.float64)
    err, corr = agreement(official, ours)
    assert err < 0.01 and corr > 0.9999, (err, corr)
    assert (official.argmax(-1) == ours.argmax(-1)).all()


def test_tiny_logits_match_the_official_code_in_float32(tiny_dir, tmp_path):
    # With the official activations switched to float32 only the bf16 dequantisation is
    # left between the two: agreement to ~1e-5 shows the semantics are identical.
    official = official_logits(tiny_dir, TOKENS, tmp_path, "--float32")
    ours = minigrok.load(tiny_dir).logits(TOKENS).astype(np.float64)
    err, corr = agreement(official, ours)
    assert err < 1e-4 and corr > 0.9999999, (err, corr)
