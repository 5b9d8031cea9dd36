"""Every file and folder minigrok writes goes through here: nothing lost, nothing half-written.

The policy, for ``logits --out``, ``golden --out``, ``make-checkpoint --out`` and whatever
writes outputs next:

* an output is written under a temporary name beside the target (``.NAME.partial-PID``, in the
  same folder so the final rename is atomic), synced to disk, and renamed when complete;
* an existing target is refused ("NAME already exists; pass --force to replace it");
* ``force`` replaces only what minigrok itself wrote: a regular file that ``recognise``
  accepts, or a folder that ``recognise`` accepts. Never a folder of other things, a device,
  FIFO or socket, and never anything through a symbolic link;
* a folder is replaced old -> ``.NAME.old-PID``, new -> NAME, then the old one deleted, so
  the old one survives until the new one is complete. SIGINT and SIGTERM roll back the
  write, or, during the two renames, are held until the swap is done;
* what a killed run left (``.NAME.partial-PID``, ``.NAME.old-PID`` whose process is gone) is
  cleaned up by the next run, which puts an old folder back where the kill fell between the
  two renames. Leftovers of a process that is still running are left alone.

Every failure is a MinigrokError (one line); a failed write is a WriteError, which is an
OSError too, so callers that catch those still do.
"""

import contextlib
import os
import re
import shutil
import signal
import stat
import threading
from pathlib import Path

from .errors import MinigrokError


class WriteError(MinigrokError, OSError):
    """An output that could not be written (disk full, read-only folder): one line for the
    user, and still an OSError for a caller that catches those."""


def starts_with(*magics: bytes):
    """A ``recognise`` for files: empty, or beginning with one of ``magics``."""
    def recognise(path: Path) -> bool:
        with open(path, "rb") as f:
            head = f.read(max(map(len, magics)))
        return not head or head.startswith(magics)
    return recognise


is_npy = starts_with(b"\x93NUMPY")                     # what np.save writes
is_npz = starts_with(b"PK\x03\x04", b"PK\x05\x06")      # a zip: np.savez, golden.write


# -- checks -------------------------------------------------------------------------------

_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def _kind(mode) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _describe(mode) -> str:
    return ("symbolic link" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode)
            else "file" if stat.S_ISREG(mode) else _kind(mode))


def _lstat(path: Path, shown):
    """os.lstat, or None where nothing is there; a broken parent is one line."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise WriteError(f"{shown}: cannot write ({_file_above(path)} is not a "
                         "folder)") from None
    except OSError as e:
        raise WriteError(f"{shown}: cannot write ({e.strerror})") from None


def _file_above(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (the one that is not a folder)."""
    for p in path.parents:
        if os.path.lexists(p):
            return p
    return path.parent


def _check_parent(path: Path, shown, make: bool):
    parent = path.parent
    if make:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise WriteError(f"{shown}: cannot write ({_file_above(path)} is not a "
                             "folder)") from None
        except OSError as e:
            raise WriteError(f"{shown}: cannot make its folder {e.filename or parent} "
                             f"({e.strerror})") from None
    elif not parent.is_dir():
        above = _file_above(path)
        if not above.is_dir():
            raise WriteError(f"{shown}: cannot write ({above} is not a folder)")
        raise WriteError(f"{shown}: cannot write (no folder {parent})")


def _check_target(path: Path, shown, force: bool, folder: bool, recognise, what: str) -> bool:
    """Whether ``path`` exists and may be replaced; raises where it may not."""
    st = _lstat(path, shown)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise MinigrokError(f"{shown} is a symbolic link; minigrok never writes through one "
                            "(give the real path, or remove the link)")
    if folder and stat.S_ISREG(st.st_mode):
        raise MinigrokError(f"{shown} is a file, not {what}; choose another name")
    if not folder and stat.S_ISDIR(st.st_mode):
        raise MinigrokError(f"{shown} is a folder; give a file name")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise MinigrokError(f"{shown} is a {_kind(st.st_mode)}; minigrok never replaces one")
    try:
        names = sorted(os.listdir(path)) if folder else []
        if folder and not names:
            return True                                 # an empty folder: nothing to lose
        if not force:
            raise MinigrokError(f"{shown} already exists; pass --force to replace it")
        ours = recognise is None or recognise(path)
    except OSError as e:
        raise MinigrokError(f"{shown}: cannot read it to check that minigrok wrote it "
                            f"({e.strerror})") from None
    if not ours:
        holds = ""
        if folder:
            holds = f": it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        raise MinigrokError(f"{shown} is not {what}{holds}; --force replaces only that "
                            "(remove it yourself, or choose another name)")
    return True


def check_file(target, force: bool = False, recognise=None, what: str = "a file minigrok wrote"):
    """Raise now what ``write_file`` would refuse (call before a long computation)."""
    path, shown = _paths(target)
    _check_parent(path, shown, make=False)
    _check_target(path, shown, force, False, recognise, what)


# -- leftovers of killed runs -----------------------------------------------------------

def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():        # ours: left by an earlier process of that number
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:                   # someone else's process
        return True
    try:                                      # a zombie has finished all it will do
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _clean_leftovers(path: Path, shown, folder: bool):
    """Remove what killed runs left beside ``path``; put an old folder back if ``path`` is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(\d+)(\.npy)?")
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return
    found = [(m[1], int(m[2]), path.parent / name) for name in names
             if (m := pattern.fullmatch(name))]
    for kind, pid, left in sorted(found, key=lambda f: f[0] == "partial"):   # olds first
        if _alive(pid):
            if kind == "old" and not os.path.lexists(path):
                raise MinigrokError(f"{shown} is missing, and {left} holds what it held: "
                                    f"process {pid} is still replacing it (wait for it, or "
                                    f"rename {left.name} back to {path.name})")
            continue
        st = _lstat(left, shown)
        if st is None:
            continue                          # cleaned meanwhile by another run
        if not (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)):
            raise MinigrokError(f"{left}: named like a leftover of an interrupted minigrok, but "
                                f"it is a {_describe(st.st_mode)}; remove it yourself")
        try:
            if kind == "old" and not os.path.lexists(path):
                os.rename(left, path)         # killed between the two renames: put it back
            elif folder:
                shutil.rmtree(left)
            else:
                os.unlink(left)
        except OSError as e:
            raise WriteError(f"{left}: left by an interrupted minigrok and cannot be "
                             f"cleaned up ({e.strerror}); remove it") from None


# -- signals ------------------------------------------------------------------------------

@contextlib.contextmanager
def _signal_guard():
    """SIGINT and SIGTERM as KeyboardInterrupt while writing; held while ``state['hold']``.

    Only the default handlers are replaced, and only in the main thread (where Python runs
    signal handlers); an ignored signal stays ignored. Restored on the way out: the process
    keeps no state of ours. A signal held during a swap raises once the swap is done.
    """
    state = {"hold": False, "caught": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["hold"]:
            state["caught"] = True
        else:
            raise KeyboardInterrupt

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):
            previous[s] = signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _release(state):
    state["hold"] = False
    if state["caught"]:
        raise KeyboardInterrupt


# -- writing ------------------------------------------------------------------------------

def _paths(target):
    """(absolute path to work on, the name as given for messages)."""
    given = Path(target).expanduser()
    return Path(os.path.abspath(given)), given


def _fsync(path: Path, directory: bool = False):
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return                                  # best effort: some systems cannot open folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path):
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder), directory=True)


def _failed(shown, e: OSError):
    return WriteError(f"{shown}: cannot write ({e.strerror or e}"
                      + (f": {e.filename}" if e.filename else "") + ")")


def write_file(target, write_fn, force: bool = False, recognise=None,
               what: str = "a file minigrok wrote") -> Path:
    """Write a file: ``write_fn(f)`` writes into an open binary file; returns the path.

    An existing target is refused unless ``force``, and then replaced only where it is a
    regular file that ``recognise(path)`` accepts (``what`` names such a file in the error).
    """
    path, shown = _paths(target)
    _check_parent(path, shown, make=False)
    _clean_leftovers(path, shown, folder=False)
    _check_target(path, shown, force, False, recognise, what)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    with _signal_guard() as state:
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except OSError as e:
                raise WriteError(f"{shown}: cannot write in {path.parent} ({e.strerror})") \
                    from None
            with open(fd, "wb") as f:
                write_fn(f)
                f.flush()
                os.fsync(f.fileno())
            state["hold"] = True
            _check_target(path, shown, force, False, recognise, what)   # changed meanwhile?
            os.rename(tmp, path)
            _fsync(path.parent, directory=True)
        except BaseException as e:
            state["hold"] = True                # a second Ctrl-C must not stop the clean-up
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError) and not isinstance(e, MinigrokError):
                raise _failed(shown, e) from None
            raise
        _release(state)
    return shown


def replace_dir(target, fill_fn, force: bool = False, recognise=None,
                what: str = "a folder minigrok wrote") -> Path:
    """Write a folder: ``fill_fn(tmp)`` fills an empty temporary folder; returns the path.

    An existing, non-empty target is refused unless ``force``, and then replaced only where
    ``recognise(path)`` accepts it; the old folder stays until the new one is complete.
    Missing parent folders are made.
    """
    path, shown = _paths(target)
    _check_parent(path, shown, make=True)
    _clean_leftovers(path, shown, folder=True)
    _check_target(path, shown, force, True, recognise, what)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    with _signal_guard() as state:
        try:
            try:
                os.mkdir(tmp)
            except OSError as e:
                raise WriteError(f"{shown}: cannot write in {path.parent} ({e.strerror})") \
                    from None
            fill_fn(tmp)
            _fsync_tree(tmp)
            # The swap: from here on a signal waits until the new folder is in place and the
            # old one gone, so an interruption can never leave neither.
            state["hold"] = True
            replacing = _check_target(path, shown, force, True, recognise, what)
            if replacing:
                os.rename(path, old)
            try:
                os.rename(tmp, path)
            except OSError:
                if replacing:
                    os.rename(old, path)
                raise
            _fsync(path.parent, directory=True)
        except BaseException as e:
            state["hold"] = True
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and not isinstance(e, MinigrokError):
                raise _failed(shown, e) from None
            raise
        if replacing:
            shutil.rmtree(old, ignore_errors=True)   # what stays is cleaned by the next run
        _release(state)
    return shown
