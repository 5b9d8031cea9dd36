"""Text to token ids and back, with Grok-1's SentencePiece model.

The model file (``tokenizer.model``, 2.2 MB, 131072 pieces) ships with the official
release, not with the checkpoint. ``find_tokenizer`` looks for it in the usual places
and, failing that, downloads it once into the cache, pinned to the release commit and
checked against its sha256.

Prompts are encoded the way the official runner does: plain ``encode(text)``, with
no BOS token in front. Id 0 is ``[PAD]``, 1 ``[BOS]``, 2 ``[EOS]``.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from ..environment import cache_dir, read_small
from ..errors import MinigrokError

TOKENIZER_NAME = "tokenizer.model"
# The file at the official release commit (xai-org/grok-1 7050ed2), and its hash.
TOKENIZER_URL = ("https://github.com/xai-org/grok-1/raw/"
                 "7050ed204b8206bb8645c7b7bbef7252f79561b0/tokenizer.model")
TOKENIZER_SHA256 = "5c69d7cbad192fa2c9d14e2a77fbfdc11597c68907b043ddb0260e3d28eddd7f"

ENV_PATH = "MINIGROK_TOKENIZER"
ENV_NO_DOWNLOAD = "MINIGROK_NO_DOWNLOAD"  # "1": never touch the network

HOW_TO_GET = (f"set {ENV_PATH} or pass --tokenizer with the path of Grok-1's "
              f"{TOKENIZER_NAME}, or download it from {TOKENIZER_URL}")


def find_tokenizer(explicit=None, checkpoint_dir=None, *, download=None,
                   url: str = TOKENIZER_URL, sha256: str = TOKENIZER_SHA256) -> Path:
    """The path of ``tokenizer.model``, searched in this order:

    1. ``explicit`` (``--tokenizer``), then 2. ``$MINIGROK_TOKENIZER``: either one,
       when given, must exist; a typo is reported, not skipped over.
    3. ``tokenizer.model`` in ``checkpoint_dir`` or its parent (the checkpoint may be
       named as the folder holding ``ckpt-0`` or as ``ckpt-0`` itself).
    4. ``cache_dir()/tokenizer.model``.
    5. Downloaded into the cache from ``url``, unless ``download`` is False
       (``None``: download unless ``$MINIGROK_NO_DOWNLOAD`` is set to 1).
    """
    for given, what in ((explicit, "--tokenizer"), (os.environ.get(ENV_PATH), ENV_PATH)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                problem = "is not a regular file" if path.exists() else "not found"
                raise MinigrokError(f"tokenizer {problem}: {path} (from {what})")
            return path

    candidates = []
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir).expanduser()
        candidates += [ckpt / TOKENIZER_NAME, ckpt.parent / TOKENIZER_NAME]
    cached = cache_dir() / TOKENIZER_NAME
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path

    if download is None:
        download = os.environ.get(ENV_NO_DOWNLOAD, "") != "1"
    if not download:
        raise MinigrokError(f"no {TOKENIZER_NAME} found and downloading is off "
                            f"({ENV_NO_DOWNLOAD}=1): {HOW_TO_GET}")
    return download_tokenizer(cached, url=url, sha256=sha256)


def download_tokenizer(dest, *, url: str = TOKENIZER_URL, sha256: str = TOKENIZER_SHA256,
                       timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest``, all or nothing.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only
    once their sha256 matches, so an interrupted or wrong download never leaves a
    ``tokenizer.model`` behind for the next run to trust.
    """
    dest = Path(dest)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise MinigrokError(f"downloaded {url} but its sha256 is {digest.hexdigest()}, "
                                f"expected {sha256}; {HOW_TO_GET}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is no secret
        os.replace(tmp, dest)
        tmp = None
        return dest
    except (OSError, ValueError, http.client.HTTPException) as e:
        # URLError and HTTPError are OSErrors; ValueError is a malformed URL.
        raise MinigrokError(f"could not download {url} to {dest} ({e}); {HOW_TO_GET}") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# Grok-1's tokenizer.model is 2.2 MB; a larger file is not a tokenizer, and is never read whole.
MAX_TOKENIZER_BYTES = 64 << 20


def load_tokenizer(path):
    """A ``sentencepiece.SentencePieceProcessor`` for the model file at ``path``.

    The bytes are read here, from a regular file of at most MAX_TOKENIZER_BYTES (a FIFO
    or a device is refused, not waited on), and handed to SentencePiece as a string.
    """
    import sentencepiece  # imported here so the rest of minigrok works without it

    path = Path(path)
    try:
        proto = read_small(path, MAX_TOKENIZER_BYTES)
    except OSError as e:
        raise MinigrokError(f"cannot load tokenizer {path}: {e.strerror or e}") from None
    try:
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (OSError, RuntimeError) as e:
        raise MinigrokError(f"cannot load tokenizer {path}: not a SentencePiece model "
                            f"({ascii(str(e).strip())[1:-1][:160]})") from None
    if sp.get_piece_size() == 0:       # what SentencePiece makes of an empty file
        raise MinigrokError(f"cannot load tokenizer {path}: not a SentencePiece model "
                            "(no pieces)")
    return sp


def check_vocab(sp, vocab_size: int) -> None:
    """A MinigrokError unless the tokenizer can spell every id the model can produce: one
    with fewer pieces than the model's vocab_size is another model's (or a cut-off file)."""
    pieces = sp.get_piece_size()
    if pieces < vocab_size:
        raise MinigrokError(f"the tokenizer has {pieces:,} pieces, fewer than the model's "
                            f"vocab_size of {vocab_size:,}: it is not this model's tokenizer "
                            "(Grok-1's has 131,072; see --tokenizer)")


def check_text(text: str, what: str = "the text") -> str:
    """``text`` if it can be encoded as UTF-8; else a MinigrokError naming the first bad
    character. Command-line arguments that are not valid UTF-8 reach Python as lone
    surrogates (U+DC80 to U+DCFF stand for the bytes 0x80 to 0xFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise MinigrokError(f"{what} is not valid UTF-8: {bad} at character {e.start}") \
            from None
    return text


def encode(sp, text: str) -> list[int]:
    """Token ids of ``text``, without BOS, exactly as the official runner encodes a prompt."""
    return list(sp.encode(check_text(text)))


def decode(sp, ids) -> str:
    """The text of token ids. Control tokens ([PAD], [BOS], [EOS]) decode to nothing."""
    return sp.decode([int(i) for i in ids])


def stream_piece(sp, ids, printed: str, final: bool = False) -> str:
    """The text to print now, given every token id generated so far.

    ids:     all generated ids (not only the newest one).
    printed: everything returned by earlier calls, concatenated.
    final:   True after the last token, to flush whatever was held back.

    Decoding one token at a time goes wrong in two ways that decoding the whole
    sequence does not: SentencePiece turns a leading '▁' into a space only when
    it is not at the start of the text, and a character outside the vocabulary is
    spelled as several byte tokens (<0xF0><0x9F>...), each of which alone decodes
    to U+FFFD. So decode everything, hold back trailing U+FFFD until the character
    is complete (or the stream ends), and return what is new since ``printed``.
    """
    text = decode(sp, ids)
    if not final:
        text = text.rstrip("\ufffd")
    if text.startswith(printed):
        return text[len(printed):]
    # Earlier text changed after it was printed. It cannot be taken back; print the
    # rest after the longest part that still agrees.
    common = len(os.path.commonprefix([text, printed]))
    return text[common:]


def stream_text(sp, prompt_ids, new_ids):
    """Yield the text of ``new_ids`` (an iterator of generated ids) piece by piece.

    The prompt is decoded with them, so the first word keeps its leading space.
    """
    ids = list(prompt_ids)
    printed = decode(sp, ids)
    for token in new_ids:
        ids.append(token)
        piece = stream_piece(sp, ids, printed)
        printed += piece
        if piece:
            yield piece
    piece = stream_piece(sp, ids, printed, final=True)
    if piece:
        yield piece
