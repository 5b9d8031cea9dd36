"""Nothing lost: every output minigrok writes (logits --out, golden --out, make-checkpoint
--out) refuses what exists without --force, replaces with it only what minigrok wrote, and
survives Ctrl-C, SIGTERM and SIGKILL with the old output intact or the new one complete.

Each hostile case runs the command line in a child process under a memory limit and a
timeout, and checks exit code 2, one line on stderr, and that no file that was there before
changed (hashes before and after).
"""

import hashlib
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigrok.formats.checkpoint import open_checkpoint
from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import preset

from testutil import REPO, tokenizer_path

MEMORY = 4 << 30
LAYERS = 4                 # the checkpoints written here: tiny's structure, 4 layers (~0.5 s)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _env():
    return dict(os.environ, MINIGROK_TOKENIZER=str(tokenizer_path()), MINIGROK_NO_DOWNLOAD="1",
                PYTHONPATH=str(REPO))


def _start(*args, patch=None):
    """``python -m minigrok ARGS`` (or a script that patches first) as a running child."""
    cmd = [sys.executable, "-m", "minigrok", *map(str, args)] if patch is None else \
        [sys.executable, "-c", patch, *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory)


def _run(*args, patch=None, timeout=60):
    p = _start(*args, patch=patch)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _one_line_error(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


def _snapshot(root: Path) -> dict:
    """{relative path: (kind, sha256 or link target)} of everything under root."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                what = ("dir" if stat.S_ISDIR(st.st_mode) else "other", "")
            found[str(p.relative_to(root))] = what
    return found


def _leftovers(folder: Path):
    return sorted(n for n in os.listdir(folder) if ".partial-" in n or ".old-" in n)


def _checkpoint(path: Path, seed: int) -> Path:
    return make_checkpoint(path, preset("tiny", LAYERS), seed=seed)


MAKE = ("make-checkpoint", "--preset", "tiny", "--num-layers", LAYERS)


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """Snapshots of the old (seed 1) and the new (seed 2) checkpoint, as written in-process."""
    root = tmp_path_factory.mktemp("expected")
    return {seed: _snapshot(_checkpoint(root / str(seed), seed)) for seed in (1, 2)}


# -- make-checkpoint: what --force may replace -----------------------------------------

def test_force_never_replaces_a_folder_of_other_things(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("years of work")
    (tmp_path / "work" / "ckpt-0").mkdir()                 # looks a little like a checkpoint
    before = _snapshot(tmp_path)
    rc, _, err = _run(*MAKE, "--out", tmp_path / "work", "--force")
    _one_line_error(rc, err, "work", "not a checkpoint minigrok wrote", "thesis.tex")
    assert _snapshot(tmp_path) == before


def test_force_never_replaces_a_download_or_a_checkpoint_with_extra_files(tmp_path):
    ck = _checkpoint(tmp_path / "c", 1)
    (ck / "tokenizer.model").write_bytes(b"sentencepiece")
    before = _snapshot(tmp_path)
    rc, _, err = _run(*MAKE, "--out", ck, "--force")
    _one_line_error(rc, err, "not a checkpoint minigrok wrote", "tokenizer.model")
    assert _snapshot(tmp_path) == before


def test_force_never_goes_through_a_symlink(tmp_path):
    ck = _checkpoint(tmp_path / "c", 1)
    os.symlink(ck, tmp_path / "link")
    before = _snapshot(tmp_path)
    rc, _, err = _run(*MAKE, "--out", tmp_path / "link", "--force")
    _one_line_error(rc, err, "link", "symbolic link")
    assert _snapshot(tmp_path) == before


def test_existing_checkpoint_is_refused_without_force_and_replaced_with_it(tmp_path, expected):
    ck = _checkpoint(tmp_path / "c", 1)
    rc, _, err = _run(*MAKE, "--out", ck, "--seed", 2)
    _one_line_error(rc, err, "already exists", "--force")
    assert _snapshot(ck) == expected[1]
    rc, _, err = _run(*MAKE, "--out", ck, "--seed", 2, "--force")
    assert rc == 0, err
    assert _snapshot(ck) == expected[2] and os.listdir(tmp_path) == ["c"]


@pytest.mark.parametrize("where", ["parent is a file", "read-only parent"])
def test_parent_folder_errors_are_one_line(tmp_path, where):
    (tmp_path / "file").write_text("x")
    parent = tmp_path / "file" if where == "parent is a file" else _read_only_folder(tmp_path)
    before = _snapshot(tmp_path)
    rc, _, err = _run(*MAKE, "--out", parent / "c")
    _one_line_error(rc, err, "cannot")
    assert _snapshot(tmp_path) == before


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot create files in: chmod 555, or /sys for root."""
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    for folder in (ro, Path("/sys")):
        try:
            os.close(os.open(folder / ".probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except OSError:
            return folder
        os.unlink(folder / ".probe")
    pytest.skip("no read-only folder to write into")


# -- make-checkpoint --force under signals -----------------------------------------------

def _wait_for(predicate, proc, timeout=30):
    """Until ``predicate()``, or the child has ended (a slow poll missed the moment: the
    test then checks the finished run instead)."""
    t0 = time.monotonic()
    while not predicate() and proc.poll() is None:
        assert time.monotonic() - t0 < timeout
        time.sleep(0.001)


def _partial_files(tmp_path, at_least):
    def ready():
        return any(len(os.listdir(p / "ckpt-0")) >= at_least
                   for p in tmp_path.glob(".c.partial-*") if (p / "ckpt-0").is_dir())
    return ready


@pytest.mark.parametrize("sig,files", [(signal.SIGINT, 0), (signal.SIGINT, 20),
                                       (signal.SIGTERM, 5)])
def test_interrupt_during_force_keeps_the_old_checkpoint(tmp_path, expected, sig, files):
    ck = _checkpoint(tmp_path / "c", 1)
    proc = _start(*MAKE, "--out", ck, "--seed", 2, "--force")
    try:
        _wait_for(_partial_files(tmp_path, files) if files else
                  lambda: any(tmp_path.glob(".c.partial-*")), proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    got = _snapshot(ck)
    if proc.returncode == 0:                    # finished before the signal: the new one
        assert got == expected[2]
    else:
        assert proc.returncode == 130 and err == "minigrok: interrupted\n", err
        assert got == expected[1]
    assert _leftovers(tmp_path) == []           # rolled back: nothing beside it


# A child that signals itself between the two renames of a --force replacement (the old
# checkpoint renamed away, the new one not yet in its place): the one moment where neither
# is at the name.
BETWEEN_RENAMES = """
import os, signal, sys
from minigrok import cli, outputs
rename = os.rename
def between(src, dst):
    rename(src, dst)
    if ".old-" in str(dst):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
outputs.os.rename = between
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_between_the_renames_finishes_the_swap(tmp_path, expected, sig):
    ck = _checkpoint(tmp_path / "c", 1)
    rc, _, err = _run(sig, *MAKE, "--out", ck, "--seed", 2, "--force", patch=BETWEEN_RENAMES)
    assert rc == 130 and err == "minigrok: interrupted\n", err
    assert _snapshot(ck) == expected[2]         # finished: the new one, complete
    assert _leftovers(tmp_path) == []


def test_sigkill_between_the_renames_is_undone_by_the_next_run(tmp_path, expected):
    ck = _checkpoint(tmp_path / "c", 1)
    rc, _, _ = _run("SIGKILL", *MAKE, "--out", ck, "--seed", 2, "--force",
                    patch=BETWEEN_RENAMES)
    assert rc == -signal.SIGKILL
    assert not ck.exists() and len(_leftovers(tmp_path)) == 2      # the old one, the new one
    # The next run puts the old one back first: so without --force it is refused.
    rc, _, err = _run(*MAKE, "--out", ck, "--seed", 2)
    _one_line_error(rc, err, "already exists")
    assert _snapshot(ck) == expected[1] and _leftovers(tmp_path) == []


def test_sigkill_while_writing_then_rerun(tmp_path, expected):
    ck = _checkpoint(tmp_path / "c", 1)
    proc = _start(*MAKE, "--out", ck, "--seed", 2, "--force")
    try:
        _wait_for(_partial_files(tmp_path, 3), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    killed = proc.returncode == -signal.SIGKILL
    assert _snapshot(ck) == expected[1 if killed else 2]     # untouched by the killed run
    rc, _, err = _run(*MAKE, "--out", ck, "--seed", 2, "--force")
    assert rc == 0, err
    assert _snapshot(ck) == expected[2] and _leftovers(tmp_path) == []


def test_leftovers_of_a_live_process_are_left_alone_and_odd_ones_named(tmp_path):
    live = tmp_path / f".c.partial-{os.getpid()}"              # this test: alive
    live.mkdir()
    (live / "x").write_text("someone else's")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.symlink(tmp_path / "precious", tmp_path / f".c.old-{dead}")  # planted, not ours
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data").write_text("keep")
    before = _snapshot(tmp_path)
    rc, _, err = _run(*MAKE, "--out", tmp_path / "c")
    _one_line_error(rc, err, f".c.old-{dead}", "symbolic link")
    assert _snapshot(tmp_path) == before
    os.unlink(tmp_path / f".c.old-{dead}")
    rc, _, err = _run(*MAKE, "--out", tmp_path / "c")
    assert rc == 0, err
    assert (live / "x").read_text() == "someone else's"


# -- logits --out and golden --out -------------------------------------------------------

def _logits(small_dir, out, *flags):
    return _run("logits", "--checkpoint", small_dir, "--tokens", "5,17", "--out", out, *flags)


def test_logits_refuses_an_existing_file_and_replaces_its_own_with_force(small_dir, tmp_path):
    out = tmp_path / "l.npy"
    assert _logits(small_dir, out)[0] == 0
    before = _snapshot(tmp_path)
    rc, _, err = _logits(small_dir, out)
    _one_line_error(rc, err, "l.npy already exists", "--force")
    assert _snapshot(tmp_path) == before
    out.write_bytes(b"")                        # empty: nothing to lose
    rc, _, err = _logits(small_dir, out, "--force")
    assert rc == 0, err
    assert _snapshot(tmp_path) == before and _leftovers(tmp_path) == []


def test_logits_force_never_replaces_another_checkpoints_tensor(small_dir, tmp_path):
    ck = _checkpoint(tmp_path / "other", 1)
    before = _snapshot(tmp_path)
    rc, _, err = _logits(small_dir, ck / "ckpt-0" / "tensor00000_000", "--force")
    _one_line_error(rc, err, "tensor00000_000", "not a .npy file")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink", "folder", "/dev/null"])
def test_logits_force_never_replaces_a_special_file_a_link_or_a_folder(small_dir, tmp_path,
                                                                        kind):
    out = tmp_path / "x.npy"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(out))                    # the socket file stays after closing
    elif kind == "symlink":
        (tmp_path / "real.npy").write_bytes(b"\x93NUMPY precious")
        os.symlink(tmp_path / "real.npy", out)
    elif kind == "folder":
        out.mkdir()
    else:
        out = Path("/dev/null")
    before, dev = _snapshot(tmp_path), os.lstat("/dev/null")
    rc, _, err = _logits(small_dir, out, "--force")
    _one_line_error(rc, err, str(out))
    assert _snapshot(tmp_path) == before
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == dev.st_rdev


@pytest.mark.parametrize("where,word", [("missing/x.npy", "no folder"),
                                        ("file/x.npy", "not a folder"),
                                        ("ro", "cannot write")])
def test_logits_parent_errors_are_one_line(small_dir, tmp_path, where, word):
    (tmp_path / "file").write_text("x")
    out = _read_only_folder(tmp_path) / "x.npy" if where == "ro" else tmp_path / where
    before = _snapshot(tmp_path)
    rc, _, err = _logits(small_dir, out)
    _one_line_error(rc, err, word)
    assert _snapshot(tmp_path) == before


def test_golden_refuses_an_existing_file_and_replaces_with_force(small_dir, tmp_path):
    out = tmp_path / "g.npz"
    out.write_bytes(b"PK\x05\x06" + bytes(18))     # an empty zip: what an .npz may be
    before = _snapshot(tmp_path)
    args = ("golden", "--checkpoint", small_dir, "--tokens", "5,17", "--out", out,
            "--layers", "0-0")
    rc, _, err = _run(*args)
    _one_line_error(rc, err, "g.npz already exists", "--force")
    assert _snapshot(tmp_path) == before
    rc, _, err = _run(*args, "--force")
    assert rc == 0, err
    assert out.read_bytes()[:4] == b"PK\x03\x04" and _leftovers(tmp_path) == []
    (tmp_path / "notes.npz").write_text("not a zip")
    before = _snapshot(tmp_path)
    rc, _, err = _run(*args[:-3], tmp_path / "notes.npz", "--force")
    _one_line_error(rc, err, "not an .npz file")
    assert _snapshot(tmp_path) == before


def test_a_complete_write_leaves_only_its_output(small_dir, tmp_path):
    rc, _, err = _logits(small_dir, tmp_path / "a.npy")
    assert rc == 0, err
    assert os.listdir(tmp_path) == ["a.npy"]
    assert open_checkpoint(small_dir).config.num_layers == 3     # the input untouched
