"""Where minigrok keeps what it makes or downloads once and reuses."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MINIGROK_CACHE``, else ``~/.cache/minigrok`` (created on demand by callers)."""
    env = os.environ.get("MINIGROK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minigrok"
