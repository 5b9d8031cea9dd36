"""Nothing hangs: hostile values on the command line, and pickles built to make an error
message explode, are one line on stderr and exit code 2, in bounded time and memory.

Each command-line case runs in a child under a memory limit and a timeout; the checks are
exit code 2, one stderr line without a traceback, no output file, no file changed.
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.errors import CheckpointError
from minigrok.formats import safepickle
from minigrok.formats.checkpoint import CKPT_DIR

from test_hostile_config import assert_one_line_error, run_limited, snapshot
from testutil import REPO, tokenizer_path


# ------------------------------------------------------------- memo DAGs in a pickle


def _dag(depth):
    """Opcodes leaving one tuple on the stack: t0 = (), t(i+1) = (t(i), t(i)), each level a
    memo GET of the level below: 4 bytes a level, a repr of about 2**(depth+2) characters."""
    out = b")\x94"                                              # EMPTY_TUPLE, MEMOIZE
    for i in range(depth):                                     # BINGET i, TUPLE2, MEMOIZE
        get = b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        out += get + b"\x86\x94"
    return out


def _u(s):
    return b"\x8c" + bytes([len(s)]) + s.encode()             # SHORT_BINUNICODE


def _g(module, name):
    return _u(module) + _u(name) + b"\x93"                    # STACK_GLOBAL


F4 = _g("numpy", "dtype") + _u("f4") + b"\x89\x88\x87R"       # numpy.dtype('f4', False, True)
BF16 = _g("numpy", "dtype") + _g("ml_dtypes", "bfloat16") + b"\x89\x88\x87R"
FROMBUFFER = _g("numpy._core.numeric", "_frombuffer")
QW = _g("__main__", "QuantizedWeight8bit")
ARRAY = (_g("numpy.core.multiarray", "_reconstruct") + b"(" + _g("numpy", "ndarray")
         + b"K\x00\x85C\x01btR")                               # _reconstruct(ndarray, (0,), b'b')
DTYPE_STATE = b"(K\x03{}NNNK\x00K\x00K\x00tb"                 # (3, {order}, None, ..., 0, 0, 0)

# Every place a value from the file meets an error message, the DAG in that place.
HOLES = {
    "frombuffer order": FROMBUFFER + b"(C\x04abcd" + F4 + b"K\x01\x85{}tR",
    "frombuffer shape": FROMBUFFER + b"(C\x04abcd" + F4 + b"{}" + _u("C") + b"tR",
    "frombuffer dtype": FROMBUFFER + b"(C\x04abcd{}K\x01\x85" + _u("C") + b"tR",
    "frombuffer axes": FROMBUFFER + b"(C\x04abcd" + F4 + b"K\x01\x85" + _u("K") + b"{}tR",
    "frombuffer arguments": FROMBUFFER + b"{}R",
    "dtype of": _g("numpy", "dtype") + b"{}\x89\x88\x87R",
    "dtype byte order": F4 + DTYPE_STATE,
    "bfloat16 byte order": BF16 + DTYPE_STATE,
    "dtype state": F4 + b"{}b",
    "reconstruct arguments": _g("numpy.core.multiarray", "_reconstruct") + b"{}R",
    "encode arguments": _g("_codecs", "encode") + b"{}" + _u("latin1") + b"\x86R",
    "reduce of a tuple": b"{})R",
    "newobj arguments": QW + b"{}\x81",
    "QuantizedWeight8bit state": QW + b")\x81{}b",
    "QuantizedWeight8bit fields": QW + b")\x81}" + _u("weight") + b"{}" + _u("scales")
                                  + b"{}ub",
    "array state": ARRAY + b"{}b",
    "array of a tuple": ARRAY + b"(K\x01K\x01\x85" + F4 + b"\x89{}tb",
    "dict key": b"}{}K\x00s",
    "global name": b"{}" + _u("x") + b"\x93",
    "the pickle itself": b"{}",
}


def _hostile_pickle(hole, depth):
    body = HOLES[hole].replace(b"{}", _dag(depth))
    return b"\x80\x04" + body + b"."


def _check_refused_fast(folder, hole, depth):
    path = folder / "tensor00007_000"
    path.write_bytes(_hostile_pickle(hole, depth))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        safepickle.load(path)
    survey = safepickle.survey(path)
    assert time.perf_counter() - t0 < 0.5, hole
    message = str(e.value)
    assert message.startswith("tensor00007_000: byte ") and len(message) < 400, message
    assert "((" not in message and survey["holds"].startswith("unreadable: ")


@settings(max_examples=150, deadline=None)
@given(hole=st.sampled_from(sorted(HOLES)), depth=st.integers(1, 24))
def test_memo_dags_never_reach_a_message(tmp_path_factory, hole, depth):
    """Every error comes in milliseconds, and names the value by its kind."""
    _check_refused_fast(tmp_path_factory.mktemp("dag"), hole, depth)


def test_memo_dags_at_depth_24_in_every_hole(tmp_path):
    """Depth 24 is a repr of some 64 MB: seconds to build where a message would hold it."""
    for hole in HOLES:
        _check_refused_fast(tmp_path, hole, 24)


def test_the_reviewers_memo_dag_is_one_line_on_the_command_line(small_dir, tmp_path):
    """Depth 60: a repr of 2**62 characters, that used to take minutes and gigabytes."""
    root = shutil.copytree(small_dir, tmp_path / "c")
    for hole in ("frombuffer order", "bfloat16 byte order"):
        data = _hostile_pickle(hole, 60)
        assert len(data) < 400
        (root / CKPT_DIR / "tensor00007_000").write_bytes(data)
        before = snapshot(root)
        rc, _, err = run_limited("inspect", "--checkpoint", root, timeout=60)
        assert_one_line_error(rc, err, "tensor00007_000: byte ", "a tuple")
        rc, out, err = run_limited("inspect", "--checkpoint", root, "--structure", timeout=60)
        assert rc == 0 and "a tuple" in out, err
        assert snapshot(root) == before


# ------------------------------------------------------------------ command-line values

@pytest.fixture(scope="module")
def short(tmp_path_factory, small_dir):
    """small_dir with a context of 16 tokens, so that too many tokens is a short list."""
    root = shutil.copytree(small_dir, tmp_path_factory.mktemp("short") / "c")
    config = root / "config.json"
    config.write_text(config.read_text().replace('"sequence_len": 8192', '"sequence_len": 16'))
    return root


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A SentencePiece model of 40 pieces: far fewer than any checkpoint's vocabulary."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([f"the quick brown fox jumps over the lazy dog {i}"
                                for i in range(200)]),
        model_writer=model, vocab_size=40, minloglevel=2)
    path = tmp_path_factory.mktemp("tok") / "small.model"
    path.write_bytes(model.getvalue())
    return path


TOKENS_17 = ",".join(["5"] * 17)

CASES = {
    "negative seed": (["generate", "--checkpoint", "{short}", "--prompt-tokens", "5",
                       "--seed", "-1"], ["--seed", "-1"]),
    "negative seed, make-checkpoint": (["make-checkpoint", "--preset", "tiny", "--out",
                                        "{tmp}/new", "--seed", "-3"], ["--seed", "-3"]),
    "temperature NaN": (["generate", "--checkpoint", "{short}", "--prompt-tokens", "5",
                         "--temperature", "nan"], ["temperature", "nan"]),
    "temperature inf": (["generate", "--checkpoint", "{short}", "--prompt-tokens", "5",
                         "--temperature", "inf"], ["temperature", "inf"]),
    "top-p NaN": (["generate", "--checkpoint", "{short}", "--prompt-tokens", "5", "--top-p",
                   "nan"], ["top_p", "nan"]),
    "prompt not UTF-8": (["generate", "--checkpoint", "{short}", "--prompt", b"ab\xff\xfe"],
                         ["--prompt", "not valid UTF-8", "0xff"]),
    "tokenize text not UTF-8": (["tokenize", b"\xc3("], ["not valid UTF-8", "0xc3"]),
    "token ids not UTF-8": (["logits", "--checkpoint", "{short}", "--tokens", b"5,\xff",
                             "--out", "{tmp}/l.npy"], ["integers", "\\udcff"]),
    "a token of 5000 digits": (["logits", "--checkpoint", "{short}", "--tokens",
                                "5," + "9" * 5000, "--out", "{tmp}/l.npy"], ["integers", "..."]),
    "logits past the context": (["logits", "--checkpoint", "{short}", "--tokens", TOKENS_17,
                                 "--out", "{tmp}/l.npy"], ["17 tokens", "16 tokens"]),
    "golden past the context": (["golden", "--checkpoint", "{short}", "--tokens", TOKENS_17,
                                 "--out", "{tmp}/g.npz"], ["17 tokens", "16 tokens"]),
    "a tokenizer smaller than the vocabulary": (
        ["generate", "--checkpoint", "{short}", "--prompt-tokens", "5", "--tokenizer",
         "{small_tokenizer}"], ["40 pieces", "1,024"]),
    "a tokenizer that is a device": (["tokenize", "hi", "--tokenizer", "/dev/zero"],
                                     ["not a regular file", "/dev/zero"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_values_are_one_line(case, short, small_tokenizer, tmp_path):
    args, words = CASES[case]
    fill = {"short": short, "tmp": tmp_path, "small_tokenizer": small_tokenizer}
    args = [a if isinstance(a, bytes) else a.format(**fill) for a in args]
    before = snapshot(short)
    rc, out, err = run_limited(*args, timeout=60)
    assert_one_line_error(rc, err.replace("minigrok generate: error", "minigrok: error")
                          .replace("minigrok make-checkpoint: error", "minigrok: error"),
                          *words)
    assert out == "" and os.listdir(tmp_path) == [] and snapshot(short) == before


def test_generate_keeps_the_last_tokens_of_a_long_prompt(short):
    """generate's documented behaviour (not an error): a prompt past the context keeps its
    last tokens, with a warning that says how many."""
    rc, out, err = run_limited("generate", "--checkpoint", short, "--prompt-tokens", TOKENS_17,
                               "--max-new-tokens", "2")
    assert rc == 0 and out.endswith("\n"), err
    assert "[14 prompt tokens: " in err
    assert "minigrok: warning: prompt of 17 tokens does not fit the 16-token context with 2 " \
           "new tokens: keeping its last 14" in err and "Traceback" not in err


def test_a_cache_that_cannot_be_a_folder_is_one_line(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("not a folder")
    for cache, words in ((plain, [str(plain), "not a directory"]),
                         (plain / "below", [str(plain), "not a directory"]),
                         ("/proc/self/minigrok-cache", ["cannot create it", "MINIGROK_CACHE"])):
        rc, _, err = run_limited("generate", "--prompt-tokens", "5",
                                 env={"MINIGROK_CACHE": str(cache)})
        assert_one_line_error(rc, err, *words)
    assert plain.read_text() == "not a folder"


# Ctrl-C at start-up, made deterministic: an import hook raises KeyboardInterrupt where the
# signal would land while that module loads.
INTERRUPT = """
import runpy, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv = ["minigrok", *{args!r}]
runpy.run_module("minigrok", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module, args", [
    ("minigrok.cli", ["tokenize", "hi"]),                   # before main() exists
    ("argparse", ["tokenize", "hi"]),                       # while cli itself imports
    ("minigrok.api", ["generate", "--prompt-tokens", "5"]),  # a command's imports (numpy)
    ("sentencepiece", ["tokenize", "hi"]),
])
def test_ctrl_c_during_start_up_is_one_line(module, args):
    env = dict(os.environ, MINIGROK_TOKENIZER=str(tokenizer_path()), MINIGROK_NO_DOWNLOAD="1")
    r = subprocess.run([sys.executable, "-c", INTERRUPT.format(module=module, args=args)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert r.returncode == 130 and r.stderr == "minigrok: interrupted\n", r.stderr
