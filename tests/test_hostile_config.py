"""Nothing hangs: hostile inputs on disk (config.json, the tensor files, their folder) are one
line on stderr and exit code 2, in bounded time and memory.

config.json is read as a small regular file (a FIFO or a device is refused, never waited on
or read without end), nested at most 16 deep, every field checked before anything is sized
from it. Tensor files must be regular files; no error message ever holds the repr of a value
from a pickle (memo references make a 200-byte DAG whose repr is exponentially long).

The command-line cases run in a child under a memory limit and a timeout, and check that no
file that was there before changed.
"""

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.errors import CheckpointError, MinigrokError
from minigrok.formats import checkpoint, safepickle
from minigrok.formats.checkpoint import CKPT_DIR, open_checkpoint, structure
from minigrok.reference.config import MAX_JSON_DEPTH, load_config

from testutil import REPO, tokenizer_path

MEMORY = 3 << 30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_limited(*args, timeout=60, env=None):
    """``python -m minigrok ARGS`` under MEMORY and ``timeout``: (exit code, stdout, stderr).
    An argument given as bytes reaches the command as those bytes (not UTF-8, say)."""
    env = dict(os.environ, MINIGROK_TOKENIZER=str(tokenizer_path()), MINIGROK_NO_DOWNLOAD="1",
               **(env or {}))
    args = [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run([sys.executable, "-m", "minigrok", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False,
                       preexec_fn=_limit_memory)
    return r.returncode, r.stdout, r.stderr


def assert_one_line_error(rc, err, *words):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("minigrok: error: "), err
    for word in words:
        assert word in err, (word, err)


def snapshot(root):
    """{relative path: (kind, sha256 or link target)}: regular files are hashed, FIFOs and
    links to devices are only named (reading them is what must never happen)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                found[os.path.relpath(p, root)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    found[os.path.relpath(p, root)] = ("file", hashlib.sha256(f.read()).digest())
            else:
                found[os.path.relpath(p, root)] = (stat.S_IFMT(st_.st_mode), "")
    return found


@pytest.fixture
def ckpt(small_dir, tmp_path):
    """A private copy of the small checkpoint to damage."""
    return shutil.copytree(small_dir, tmp_path / "c")


def _error(call, *words, within=2.0):
    t0 = time.perf_counter()
    with pytest.raises(MinigrokError) as e:
        call()
    assert time.perf_counter() - t0 < within
    message = str(e.value)
    assert "\n" not in message and len(message) < 1000, message
    for word in words:
        assert word in message, (word, message)
    return message


# ------------------------------------------------------------------------ config.json

def _config(root, text):
    path = root / "config.json"
    path.unlink()
    path.write_text(text)


CONFIG_CASES = {
    "num_layers 1e8": ('{"num_layers": 1e8}', ["num_layers", "100000000", "1,024"]),
    "num_layers 10**12": ('{"num_layers": 1000000000000}', ["num_layers", "1,024"]),
    "a size of 40 digits": ('{"emb_size": ' + "9" * 40 + "}", ["emb_size", "above"]),
    "an integer of 5000 digits": ('{"vocab_size": 1' + "0" * 5000 + "}", ["not valid JSON"]),
    "products past any file": (('{"vocab_size": 2147483647, "emb_size": 2147483640, '
                                '"widening_factor": 0.001}'), ["embeddings", "bytes"]),
    "widening_factor NaN": ('{"widening_factor": NaN}', ["widening_factor", "nan"]),
    "widening_factor inf": ('{"widening_factor": Infinity}', ["widening_factor", "inf"]),
    "widening_factor 1e400": ('{"widening_factor": 1e400}', ["widening_factor", "inf"]),
    "widening_factor tiny": ('{"widening_factor": 1e-5}', ["widening_factor", "ffn_size"]),
    "widening_factor huge": ('{"widening_factor": 1e6}', ["widening_factor", "ffn_size"]),
    "widening_factor 10**400": ('{"widening_factor": 1' + "0" * 400 + "}",
                                ["widening_factor", "401 digits"]),
    "negative size": ('{"key_size": -16}', ["key_size", "positive"]),
    "fractional size": ('{"num_layers": 2.5}', ["num_layers", "2.5"]),
    "a newline in a key": ('{"bad\\nkey": 1}', ["unknown field", "\\n"]),
    "a newline in a value": ('{"emb_size": "x\\ny"}', ["emb_size", "\\n"]),
    "a long value": ('{"emb_size": "' + "x" * 10000 + '"}', ["emb_size", "..."]),
    "many unknown keys": ("{" + ", ".join(f'"k{i}": 1' for i in range(2000)) + "}",
                          ["unknown field", "..."]),
    "not an object": ("[1, 2]", ["expected a JSON object"]),
    "not JSON": ("{num_layers: 3}", ["not valid JSON"]),
}
for name in ("attn_output_multiplier", "embedding_multiplier_scale", "output_multiplier_scale"):
    for value in ("NaN", "Infinity", "-Infinity", "0", "-0.5", "1e300", "1e-300"):
        CONFIG_CASES[f"{name} {value}"] = (f'{{"{name}": {value}}}', [name, "finite number"])


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_hostile_config_is_one_line(ckpt, case):
    text, words = CONFIG_CASES[case]
    _config(ckpt, text)
    _error(lambda: load_config(ckpt), *words)
    _error(lambda: open_checkpoint(ckpt), *words)


def test_config_json_must_be_a_small_regular_file(ckpt, tmp_path):
    path = ckpt / "config.json"
    cases = {
        "FIFO": (lambda: os.mkfifo(path), "not a regular file (a FIFO)"),
        "link to /dev/zero": (lambda: os.symlink("/dev/zero", path), "a character device"),
        "directory": (lambda: path.mkdir(), "a directory"),
        "dangling link": (lambda: os.symlink(tmp_path / "nowhere", path), "cannot read"),
        # sparse: 16 GB on paper, nothing on disk; read without a limit it would never end
        "huge file": (lambda: _sparse(path, 16 << 30), "more than the 65,536 allowed"),
        "not UTF-8": (lambda: path.write_bytes(b'{"num_layers": "\xff"}'), "not UTF-8"),
    }
    for make, words in cases.values():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif os.path.lexists(path):
            path.unlink()
        make()
        _error(lambda: load_config(ckpt), words)


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def _nested(reps, kind):
    """A config whose emb_size is nested ``reps`` times: (text, how deep it nests)."""
    opening, closing, per = {"list": ("[", "]", 1), "object": ('{"a": ', "}", 1),
                             "mixed": ('[{"a": ', "}]", 2)}[kind]
    return '{"emb_size": ' + opening * reps + "1" + closing * reps + "}", 1 + per * reps


@settings(max_examples=60, deadline=None)
@given(reps=st.one_of(st.integers(0, 40), st.integers(40, 40_000)),
       kind=st.sampled_from(["list", "object", "mixed"]), strings=st.booleans())
def test_nested_json_of_any_depth_is_one_line(tmp_path_factory, reps, kind, strings):
    root = tmp_path_factory.mktemp("nested")
    text, depth = _nested(reps, kind)
    if strings:     # brackets inside a string (and an escaped quote) do not nest
        text = '{"emb_size": "' + "[{" * 100 + '\\"]", ' + text[1:]
    (root / "config.json").write_text(text)
    if len(text.encode()) > 64 * 1024:
        words = ["more than the 65,536 allowed"]
    elif depth > MAX_JSON_DEPTH:
        words = ["nested more than"]
    else:
        words = ["emb_size must be a number"] if reps else []
    _error(lambda: load_config(root), *words)


def test_hostile_configs_on_the_command_line(ckpt, tmp_path):
    """What the reviewer ran: each is one line and exit 2, within the limits, nothing
    changed. The NaN multiplier used to print empty text with exit code 0."""
    cases = [
        (lambda p: os.mkfifo(p), ["inspect"], "a FIFO"),
        (lambda p: p.write_text('{"num_layers": 1e8}'), ["inspect"], "num_layers"),
        (lambda p: p.write_text("[" * 100_000), ["inspect"], "more than the 65,536"),
        (lambda p: p.write_text("[" * 1000 + "]" * 1000), ["inspect"], "nested more than"),
        (lambda p: p.write_text('{"attn_output_multiplier": NaN}'),
         ["generate", "--prompt-tokens", "5,6", "--max-new-tokens", "2"],
         "attn_output_multiplier"),
    ]
    path = ckpt / "config.json"
    for make, command, words in cases:
        path.unlink()
        make(path)
        before = snapshot(ckpt)
        rc, out, err = run_limited(command[0], "--checkpoint", ckpt, *command[1:], timeout=60)
        assert_one_line_error(rc, err, words)
        assert out == "" and snapshot(ckpt) == before


# ------------------------------------------------------------------------- tensor files

def test_a_tensor_file_that_is_no_regular_file_is_one_line(ckpt, tmp_path):
    victim = ckpt / CKPT_DIR / "tensor00007_000"
    for make, words in ((lambda: os.mkfifo(victim), "not a regular file (a FIFO)"),
                        (lambda: os.symlink("/dev/zero", victim), "(a character device)"),
                        (lambda: victim.mkdir(), "(a directory)"),
                        (lambda: os.symlink(tmp_path / "gone", victim), "cannot read")):
        if victim.is_dir() and not victim.is_symlink():
            victim.rmdir()
        else:
            victim.unlink()
        make()
        message = _error(lambda: open_checkpoint(ckpt), "tensor00007_000", words)
        with pytest.raises(CheckpointError, match="^tensor00007_000: byte 0: cannot read: "):
            safepickle.load(victim)
        assert safepickle.survey(victim)["holds"].startswith("unreadable: ")
        holds = [layout["holds"] for layout in structure(ckpt)]
        assert any(h.startswith("unreadable: ") for h in holds), holds
    before = snapshot(ckpt)
    for command in (["inspect"], ["inspect", "--structure"]):
        rc, out, err = run_limited(command[0], "--checkpoint", ckpt, *command[1:])
        if "--structure" in command:
            assert rc == 0 and "unreadable: " in out, err
        else:
            assert_one_line_error(rc, err, message)
    os.unlink(victim)
    os.mkfifo(victim)                   # the one that used to hang
    rc, out, err = run_limited("inspect", "--checkpoint", ckpt, timeout=60)
    assert_one_line_error(rc, err, "tensor00007_000: not a regular file (a FIFO)")
    assert snapshot(ckpt).keys() == before.keys()


def test_an_unlistable_ckpt0_is_one_line(ckpt, monkeypatch):
    real = os.scandir

    def denied(path="."):
        if os.fspath(path).endswith(CKPT_DIR):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(checkpoint.os, "scandir", denied)
    _error(lambda: open_checkpoint(ckpt), "cannot list: Permission denied")
    _error(lambda: structure(ckpt), "cannot list: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_an_unreadable_ckpt0_on_the_command_line(ckpt):
    os.chmod(ckpt / CKPT_DIR, 0)
    try:
        rc, _, err = run_limited("inspect", "--checkpoint", ckpt)
    finally:
        os.chmod(ckpt / CKPT_DIR, 0o755)
    assert_one_line_error(rc, err, "Permission denied")


def test_a_config_asking_for_more_files_than_there_are_is_bounded(ckpt):
    """1,024 layers (the most accepted) where 3 are present: one line, the first files
    named and the rest counted, not 12,000 names."""
    text = (ckpt / "config.json").read_text().replace('"num_layers": 3', '"num_layers": 1024')
    _config(ckpt, text)
    message = _error(lambda: open_checkpoint(ckpt), "missing", "more", "12290 tensor files")
    assert message.count("missing") <= 12
