"""Grok-1's SentencePiece tokenizer: the real model file, and how minigrok finds it.

The tests that need the real ``tokenizer.model`` read it from ``$MINIGROK_TOKENIZER``
or from ``shared/grok-1/`` beside the repository, and fail (not skip) without it. The
tests of finding and downloading use small stand-in files and ``file://`` URLs, so no
test touches the network.
"""

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.errors import MinigrokError
from minigrok.formats.tokenizer import (
    TOKENIZER_SHA256,
    TOKENIZER_URL,
    decode,
    download_tokenizer,
    encode,
    find_tokenizer,
    load_tokenizer,
    stream_piece,
)

SHARED_TOKENIZER = Path(__file__).parents[2] / "shared" / "grok-1" / "tokenizer.model"


def real_tokenizer_path() -> Path:
    env = os.environ.get("MINIGROK_TOKENIZER")
    path = Path(env) if env else SHARED_TOKENIZER
    if not path.is_file():
        pytest.fail(f"Grok-1 tokenizer.model not found at {path}: set MINIGROK_TOKENIZER "
                    f"to its path (it is at {TOKENIZER_URL})")
    return path


@pytest.fixture(scope="module")
def sp():
    return load_tokenizer(real_tokenizer_path())


# --- the real model -----------------------------------------------------------------

def test_real_model_is_the_release_file():
    digest = hashlib.sha256(real_tokenizer_path().read_bytes()).hexdigest()
    assert digest == TOKENIZER_SHA256


def test_special_ids_and_vocab_size(sp):
    assert sp.vocab_size() == 131072
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert [sp.id_to_piece(i) for i in range(3)] == ["[PAD]", "[BOS]", "[EOS]"]


def test_encode_has_no_bos(sp):
    ids = encode(sp, "Hello world")
    assert ids == [11770, 1135]  # '▁Hello', '▁world': no 1 in front, no 2 behind
    assert encode(sp, "") == []
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)


def test_control_tokens_decode_to_nothing(sp):
    assert decode(sp, [1] + encode(sp, "hi") + [2, 0]) == "hi"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_round_trip(sp, text):
    assert decode(sp, encode(sp, text)) == text


def stream_all(sp, ids):
    """Feed ids one at a time, as generation does; return the printed pieces."""
    printed, pieces = "", []
    for n in range(1, len(ids) + 1):
        piece = stream_piece(sp, ids[:n], printed, final=(n == len(ids)))
        printed += piece
        pieces.append(piece)
    return pieces


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_stream_pieces_concatenate_to_decode(sp, text):
    ids = encode(sp, text)
    pieces = stream_all(sp, ids)
    assert "".join(pieces) == decode(sp, ids)
    if "\ufffd" not in text:  # no half-built character is ever shown
        assert not any("\ufffd" in p for p in pieces)


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 131071), max_size=12))
def test_stream_any_ids_concatenate_to_decode(sp, ids):
    assert "".join(stream_all(sp, ids)) == decode(sp, ids)


def test_stream_spaces_and_multibyte(sp):
    ids = encode(sp, "a 😀 中")  # the emoji is four byte tokens
    pieces = stream_all(sp, ids)
    assert "".join(pieces) == "a 😀 中"
    assert "😀" in pieces or " 😀" in pieces  # printed whole, once complete
    # A leading '▁' is dropped at the very start of the text and a space elsewhere.
    world = encode(sp, "Hello world")
    assert stream_all(sp, world) == ["Hello", " world"]


def test_stream_final_flushes_a_dangling_byte(sp):
    ids = encode(sp, "😀")[:2]  # half a character
    assert stream_piece(sp, ids, "") == ""
    assert stream_piece(sp, ids, "", final=True) == decode(sp, ids)


def test_load_tokenizer_bad_file(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(MinigrokError, match="cannot load tokenizer"):
        load_tokenizer(bad)


# --- finding the file ---------------------------------------------------------------

@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No $MINIGROK_TOKENIZER, an empty cache, and no network."""
    monkeypatch.delenv("MINIGROK_TOKENIZER", raising=False)
    monkeypatch.setenv("MINIGROK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGROK_NO_DOWNLOAD", "1")
    return tmp_path


def make(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_find_order(clean_env, monkeypatch):
    tmp = clean_env
    root = tmp / "checkpoints"  # the folder holding ckpt-0
    ckpt = root / "ckpt-0"
    ckpt.mkdir(parents=True)
    explicit = make(tmp / "explicit" / "tokenizer.model")
    from_env = make(tmp / "env" / "tokenizer.model")
    cached = make(tmp / "cache" / "tokenizer.model")
    beside_parent = make(root / "tokenizer.model")
    monkeypatch.setenv("MINIGROK_TOKENIZER", str(from_env))

    assert find_tokenizer(explicit, ckpt) == explicit
    assert find_tokenizer(None, ckpt) == from_env
    monkeypatch.delenv("MINIGROK_TOKENIZER")
    assert find_tokenizer(None, ckpt) == beside_parent  # checkpoint given as ckpt-0
    assert find_tokenizer(None, root) == beside_parent  # checkpoint given as its folder
    inside = make(ckpt / "tokenizer.model")
    assert find_tokenizer(None, ckpt) == inside  # the checkpoint folder itself first
    assert find_tokenizer(None, tmp / "elsewhere") == cached
    assert find_tokenizer() == cached


def test_missing_explicit_or_env_path_is_an_error(clean_env, monkeypatch):
    make(clean_env / "cache" / "tokenizer.model")  # would be found if we fell through
    with pytest.raises(MinigrokError, match="--tokenizer"):
        find_tokenizer(clean_env / "typo.model")
    monkeypatch.setenv("MINIGROK_TOKENIZER", str(clean_env / "typo.model"))
    with pytest.raises(MinigrokError, match="MINIGROK_TOKENIZER"):
        find_tokenizer()


def test_nothing_found_and_no_download(clean_env):
    with pytest.raises(MinigrokError) as err:
        find_tokenizer(None, clean_env)
    message = str(err.value)
    assert "MINIGROK_TOKENIZER" in message and "--tokenizer" in message
    assert TOKENIZER_URL in message


# --- downloading it ----------------------------------------------------------------

def test_download_into_cache(clean_env):
    payload = b"stand-in tokenizer bytes" * 1000
    source = make(clean_env / "remote" / "tokenizer.model", payload)
    path = find_tokenizer(None, None, download=True, url=source.as_uri(),
                          sha256=hashlib.sha256(payload).hexdigest())
    assert path == clean_env / "cache" / "tokenizer.model"
    assert path.read_bytes() == payload
    assert sorted(os.listdir(path.parent)) == ["tokenizer.model"]  # no temp file left


def test_download_wrong_sha_leaves_nothing(clean_env):
    source = make(clean_env / "remote" / "tokenizer.model", b"tampered")
    dest = clean_env / "cache" / "tokenizer.model"
    with pytest.raises(MinigrokError, match="sha256") as err:
        download_tokenizer(dest, url=source.as_uri(), sha256=TOKENIZER_SHA256)
    assert "MINIGROK_TOKENIZER" in str(err.value)
    assert os.listdir(dest.parent) == []
    # and the next lookup does not find a half-trusted file either
    with pytest.raises(MinigrokError):
        find_tokenizer()


def test_download_unreachable(clean_env, monkeypatch):
    monkeypatch.delenv("MINIGROK_NO_DOWNLOAD")  # download on by default
    url = (clean_env / "no-such-file").as_uri()
    with pytest.raises(MinigrokError, match="could not download") as err:
        find_tokenizer(url=url)
    assert "MINIGROK_TOKENIZER" in str(err.value) and "--tokenizer" in str(err.value)
    assert os.listdir(clean_env / "cache") == []
