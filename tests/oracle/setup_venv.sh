#!/usr/bin/env bash
# Create (or reuse) the Python 3.11 virtualenv that runs the official Grok-1 JAX code as an oracle.
#
# The official release (xai-org/grok-1, commit 7050ed2) needs jax 0.4.25: newer jax removed
# jax.experimental.maps and the shard_map/pjit spellings it uses. It is kept outside the repo
# and outside the project's own environment, so minigrok itself never depends on jax.
#
#   MINIGROK_ORACLE_VENV  where the venv lives   (default ~/.cache/minigrok/oracle-venv)
#   GROK1_SRC             official source folder (default ~/.cache/minigrok/grok-1)
#   PYTHON                interpreter to build it (default python3.11)
#
# Safe to rerun: a venv whose python already imports the pinned packages is left as it is.
set -euo pipefail

VENV="${MINIGROK_ORACLE_VENV:-$HOME/.cache/minigrok/oracle-venv}"
SRC="${GROK1_SRC:-$HOME/.cache/minigrok/grok-1}"
PYTHON="${PYTHON:-python3.11}"
PINS=(jax==0.4.25 jaxlib==0.4.25 dm-haiku==0.0.12 numpy==1.26.4 sentencepiece==0.2.0)

check() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import jax, jaxlib, haiku, numpy, sentencepiece
assert jax.__version__ == "0.4.25", jax.__version__
assert jaxlib.__version__ == "0.4.25", jaxlib.__version__
assert numpy.__version__ == "1.26.4", numpy.__version__
PY
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "oracle venv ready: $VENV"
else
    echo "creating oracle venv at $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
    check || { echo "oracle venv at $VENV does not import the pinned packages" >&2; exit 1; }
    echo "oracle venv ready: $VENV"
fi

# The official source is not ours to commit; just say whether the oracle can find it.
for f in model.py checkpoint.py runners.py; do
    if [ ! -f "$SRC/$f" ]; then
        echo "warning: $SRC/$f missing (set GROK1_SRC to the extracted xai-org/grok-1 checkout)" >&2
    fi
done
