"""What minigrok reads from the environment that more than one layer needs.

``MINIGROK_CACHE``: where minigrok keeps what it makes or downloads once and reuses.
``MINIGROK_THREADS``: how many threads its CPU work may use (the fast paths, the writer).
``open_regular``, ``read_small``: how every layer opens a file a user names (config.json,
tensor files, tokenizer.model): regular files only, and small ones read with a limit.
Imports nothing of minigrok but its errors, so every layer may use it.
"""

import errno
import os
import stat
from pathlib import Path

from .errors import MinigrokError

CACHE_ENV = "MINIGROK_CACHE"


def cache_dir() -> Path:
    """``$MINIGROK_CACHE``, else ``~/.cache/minigrok`` (created on demand by callers).

    A MinigrokError when the path can never be a folder: it, or the nearest part of it
    that exists, is something other than a directory. (Whether it is writable is left to
    the write: a read-only cache that already holds everything is fine.)
    """
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "minigrok"
    for part in (path, *path.parents):
        try:
            mode = os.stat(part).st_mode
        except (FileNotFoundError, NotADirectoryError):     # look at the part above it
            continue
        except OSError as e:
            raise MinigrokError(f"cache folder {path}: {part}: {e.strerror or e} (set "
                                f"{CACHE_ENV} to a writable folder)") from None
        if not stat.S_ISDIR(mode):
            raise MinigrokError(f"cache folder {path}: {part} is not a directory (set "
                                f"{CACHE_ENV} to a writable folder)")
        break
    return path


def ensure_cache_dir() -> Path:
    """cache_dir(), created if need be: a MinigrokError naming the folder (and what to set)
    when it cannot be, rather than a traceback from the first write into it."""
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinigrokError(f"cache folder {path}: cannot create it: {e.strerror or e} (set "
                            f"{CACHE_ENV} to a writable folder)") from None
    return path


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


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """'a regular file', 'a FIFO', 'a directory', ...: what an st_mode is, for messages."""
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def open_regular(path) -> int:
    """A read-only descriptor of ``path``, which must be (or link to) a regular file.

    O_NONBLOCK, because opening a FIFO for reading otherwise waits for a writer, forever;
    the check is fstat of what was opened, so a file swapped for a FIFO or a device between
    a check and the open cannot slip through. Anything else is an OSError whose strerror
    says what the path is ("not a regular file (a FIFO)").
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({file_kind(mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them: a larger file (or
    one that grows while read) is an OSError, before more than ``limit + 1`` bytes are read."""
    fd = open_regular(path)
    with open(fd, "rb") as f:
        size = os.fstat(fd).st_size
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit:
            raise OSError(errno.EFBIG, f"{size:,} bytes, more than the {limit:,} allowed")
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"more than the {limit:,} bytes allowed (it grew "
                                       "while being read)")
    return data
