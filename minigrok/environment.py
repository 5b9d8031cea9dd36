"""What minigrok reads from the environment that more than one layer needs.

``MINIGROK_CACHE``: where minigrok keeps what it makes or downloads once and reuses.
``MINIGROK_THREADS``: how many threads its CPU work may use (the fast paths, the writer).
Imports nothing of minigrok but its errors, so every layer may use it.
"""

import os
from pathlib import Path

from .errors import MinigrokError


def cache_dir() -> Path:
    """``$MINIGROK_CACHE``, else ``~/.cache/minigrok`` (created on demand by callers)."""
    env = os.environ.get("MINIGROK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minigrok"


def num_threads() -> int:
    """Threads for minigrok's CPU work: $MINIGROK_THREADS, else the cores this process may use."""
    env = os.environ.get("MINIGROK_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise MinigrokError(f"MINIGROK_THREADS={env!r}: a whole number of threads, 1 or more")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                   # not Linux
        return os.cpu_count() or 1
