"""Exercises encode_prompt and decode: Grok-1's SentencePiece tokenizer, both ways (lesson 01).

encode_prompt: a prompt's ids as the official runner makes them: ``sp.encode(prompt)`` with
no [BOS] in front, and a prompt too long for the context keeps its *last* ids.
decode: ids back to text as SentencePiece does it: control pieces vanish, ``▁`` is a space,
the one space SentencePiece put in front of the text is dropped, and byte pieces
(``<0xF0>``...) are joined into bytes before those are read as UTF-8.

The checker cannot load Grok-1's tokenizer.model (the grader imports only the reference), so
it builds TinySentencePiece: a small vocabulary laid out like Grok-1's (ids 0-3 [PAD], [BOS],
[EOS], [UNK], single digits, 256 byte pieces, words with a leading ``▁``) behind the part of
SentencePieceProcessor's interface the exercises use. Both references take any object with
that interface: tests/test_new_exercises.py runs them on the real tokenizer and holds them
to SentencePiece's own encode and decode (minigrok/formats/tokenizer.py).

A decoded text reaches the checker as its code points (the checker compares arrays of
numbers); failures show it as text again.
"""

import numpy as np

from .grading import Exercise, Failed, Mistake, Property, call

SPACE = "\u2581"                  # "▁", SentencePiece's visible space
CONTROL = ("[PAD]", "[BOS]", "[EOS]")
UNKNOWN = "[UNK]"


def _byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


class TinySentencePiece:
    """A small SentencePiece model with Grok-1's layout and SentencePieceProcessor's methods.

    Ids 0, 1, 2 are the control pieces [PAD], [BOS], [EOS]; 3 is [UNK]; then the digits,
    the 256 byte pieces <0x00>...<0xFF>, and the text pieces, whose ``▁`` stands for a
    space. ``encode`` works as Grok-1's model does on the outside: a ``▁`` in front of the
    text (add_dummy_prefix), every space a ``▁`` (no whitespace collapsed), digits one
    piece each, the longest matching piece first, and a character no piece spells as its
    UTF-8 bytes (byte fallback). It adds no [BOS] unless asked, like SentencePiece.
    """

    WORDS = (SPACE, SPACE * 2, SPACE * 4, "\n", "\n\n", ",", ".", "!", "?", "'",
             f"{SPACE}the", f"{SPACE}Grok", f"{SPACE}is", f"{SPACE}a", f"{SPACE}hello",
             f"{SPACE}world", f"{SPACE}model", f"{SPACE}I", "Hello", "ing", "er",
             f"{SPACE}é", "é", "中", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

    def __init__(self):
        self._pieces = [*CONTROL, UNKNOWN, *"0123456789",
                        *(_byte_piece(b) for b in range(256)), *self.WORDS]
        self._ids = {p: i for i, p in enumerate(self._pieces)}
        self._byte0 = self._ids[_byte_piece(0)]
        self._longest = max(len(p) for p in self.WORDS)

    def __repr__(self):
        first = self._byte0
        return (f"TinySentencePiece({len(self._pieces)} pieces: 0 [PAD], 1 [BOS], 2 [EOS], "
                f"3 [UNK], digits 4-13, bytes <0x00>-<0xFF> {first}-{first + 255}, "
                f"words {first + 256}-{len(self._pieces) - 1})")

    # SentencePieceProcessor's interface (the part the exercises need)
    def get_piece_size(self) -> int:
        return len(self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)

    def id_to_piece(self, i) -> str:
        return self._pieces[int(i)]

    def piece_to_id(self, piece: str) -> int:
        return self._ids.get(piece, self._ids[UNKNOWN])

    def is_control(self, i) -> bool:
        return 0 <= int(i) < len(CONTROL)

    def is_unknown(self, i) -> bool:
        return int(i) == self._ids[UNKNOWN]

    def is_byte(self, i) -> bool:
        return self._byte0 <= int(i) < self._byte0 + 256

    def pad_id(self) -> int:
        return 0

    def bos_id(self) -> int:
        return 1

    def eos_id(self) -> int:
        return 2

    def unk_id(self) -> int:
        return 3

    def encode(self, text, out_type=int, add_bos=False, add_eos=False, **_):
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self._segment(text)
        ids = ([self.bos_id()] if add_bos else []) + ids + ([self.eos_id()] if add_eos else [])
        return [self._pieces[i] for i in ids] if out_type is str else ids

    encode_as_ids = EncodeAsIds = encode

    def decode(self, ids):
        raise RuntimeError("this tokenizer has no decode: writing it is the exercise (use "
                           "id_to_piece, is_control and is_byte)")

    def _segment(self, text: str) -> list:
        if not text:
            return []
        s = SPACE + text.replace(" ", SPACE)
        ids, i = [], 0
        while i < len(s):
            if s[i] in "0123456789":                       # digits: one piece each
                ids.append(self._ids[s[i]])
                i += 1
                continue
            for n in range(min(self._longest, len(s) - i), 0, -1):
                piece = s[i:i + n]
                if piece in self._ids and not any(c in "0123456789" for c in piece) and \
                        piece not in (*CONTROL, UNKNOWN) and not piece.startswith("<0x"):
                    ids.append(self._ids[piece])
                    i += n
                    break
            else:                                          # byte fallback
                ids += [self._byte0 + b for b in s[i].encode("utf-8")]
                i += 1
        return ids


def codepoints(text: str):
    """A text as the checker compares it: int64 [len(text)], one code point per character."""
    return np.array([ord(c) for c in text], dtype=np.int64)


def as_text(points) -> str:
    """The inverse of codepoints, for messages (a value that is no character shows as '?')."""
    out = []
    for p in np.asarray(points).reshape(-1).tolist():
        try:
            out.append(chr(int(p)))
        except (ValueError, OverflowError, TypeError):
            out.append("?")
    return "".join(out)


def _utf8_like_sentencepiece(data: bytes) -> str:
    """Bytes as text the way SentencePiece reads a run of byte pieces: each whole UTF-8
    character as itself, and each byte that does not start one as U+FFFD."""
    out, i = [], 0
    while i < len(data):
        for n in (1, 2, 3, 4):
            try:
                ch = data[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(ch) == 1:
                out.append(ch)
                i += n
                break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def decode_text(sp, ids) -> str:
    """SentencePiece's decode, piece by piece (what minigrok's tokenizer.decode calls).

    Control pieces give nothing. Byte pieces collect into a run of bytes, read as UTF-8 when
    the run ends. Every other piece is its text with ``▁`` as a space, except that the first
    such piece (or byte) of the text loses one leading ``▁``: the space SentencePiece put in
    front of the text when it encoded it.
    """
    parts, run, first = [], bytearray(), True
    for i in ids:
        i = int(i)
        if sp.is_control(i):
            continue
        if sp.is_byte(i):
            run.append(int(sp.id_to_piece(i)[3:5], 16))
            first = False
            continue
        if run:
            parts.append(_utf8_like_sentencepiece(bytes(run)))
            run.clear()
        piece = sp.id_to_piece(i)
        if first and piece.startswith(SPACE):
            piece = piece[1:]
        first = False
        parts.append(piece.replace(SPACE, " "))
    if run:
        parts.append(_utf8_like_sentencepiece(bytes(run)))
    return "".join(parts)


# ------------------------------------------------------------------ texts to tokenize

# Pieces of prompts: words the tiny vocabulary holds, spaces (one, two, leading), digits, and
# characters it spells as bytes (ü: 2 bytes, ❤ and €: 3, 🦊: 4).
FRAGMENTS = ("Hello", " world", " ", "Grok", " is", " a", " model", "the", "42", "7", ".",
             "!", "\n", "é", " é", "ü", "中", "❤", "€", "🦊", "ab", "I")


def _texts(st, min_size=1):
    return st.lists(st.sampled_from(FRAGMENTS), min_size=min_size, max_size=8).map("".join)


# ------------------------------------------------------------------ 0a. encode_prompt

def _encode_reference(sp, prompt, max_tokens):
    # minigrok/formats/tokenizer.py encode (sp.encode, no BOS) and reference/generate.py
    # generate_tokens (a prompt longer than the room left keeps its last tokens).
    ids = list(sp.encode(prompt))
    return np.array(ids[-max_tokens:] if len(ids) > max_tokens else ids, dtype=np.int64)


def _encode_cases(st, hnp):
    @st.composite
    def cases(draw):
        return {"sp": TinySentencePiece(), "prompt": draw(_texts(st)),
                "max_tokens": draw(st.integers(1, 16))}
    return cases()


def _encode_example():
    return {"sp": TinySentencePiece(), "prompt": "Hello world, I ❤ Grok 42!", "max_tokens": 64}


def _encode_shape(case):
    return [(min(len(case["sp"].encode(case["prompt"])), case["max_tokens"]),)]


def _pieces_of(sp, ids) -> list:
    return [sp.id_to_piece(i) for i in np.asarray(ids).reshape(-1).tolist()
            if 0 <= int(i) < sp.get_piece_size()]


def _encode_no_control(ex, fn, case):
    ids = call(ex, fn, case)[0]
    sp = case["sp"]
    bad = [int(i) for i in ids.reshape(-1).tolist() if 0 <= int(i) < 3]
    if bad:
        raise Failed([f"your ids contain {', '.join(sp.id_to_piece(i) for i in bad)}: a prompt "
                      "is plain sp.encode(prompt), with no control token (the official runner "
                      "adds no [BOS], and no [EOS] either)",
                      f"your pieces: {_pieces_of(sp, ids)}"], case, [ids])


def _encode_round_trip(ex, fn, case):
    roomy = dict(case, max_tokens=10_000)
    ids = call(ex, fn, roomy)[0]
    sp = roomy["sp"]
    if ids.ndim != 1 or not all(0 <= int(i) < sp.get_piece_size() for i in ids.tolist()):
        return
    text = decode_text(sp, ids)
    if text != roomy["prompt"]:
        raise Failed([f"your ids decode to {text!r}, not to the prompt {roomy['prompt']!r}",
                      f"your pieces: {_pieces_of(sp, ids)}"], roomy, [ids])


def _encode_keeps_last(ex, fn, case):
    sp, prompt = case["sp"], case["prompt"]
    full = list(sp.encode(prompt))
    if len(full) < 2:
        return
    short = dict(case, max_tokens=len(full) - 1)
    ids = call(ex, fn, short)[0]
    if ids.shape != (len(full) - 1,):
        raise Failed([f"the prompt is {len(full)} ids and max_tokens is {len(full) - 1}: return "
                      f"{len(full) - 1} ids, got shape {list(ids.shape)}"], short, [ids])
    if ids.tolist() != full[1:]:
        raise Failed(["a prompt longer than max_tokens keeps its LAST max_tokens ids (the "
                      "end of the prompt is what the model continues)",
                      f"all the ids: {full}", f"expected:    {full[1:]}",
                      f"got:         {ids.tolist()}"], short, [ids])


def _encode_bos(sp, prompt, max_tokens):
    return np.array(([sp.bos_id()] + list(sp.encode(prompt)))[-max_tokens:], np.int64)


def _encode_first(sp, prompt, max_tokens):
    return np.array(list(sp.encode(prompt))[:max_tokens], np.int64)


def _encode_space(sp, prompt, max_tokens):
    return np.array(list(sp.encode(" " + prompt))[-max_tokens:], np.int64)


def _encode_eos(sp, prompt, max_tokens):
    return np.array((list(sp.encode(prompt)) + [sp.eos_id()])[-max_tokens:], np.int64)


ENCODE_PROMPT = Exercise(
    "encode_prompt", "encode_prompt", ("sp", "prompt", "max_tokens"), ("ids",),
    "a prompt's token ids as the official runner makes them",
    "01_tokenizer.py",
    "minigrok/formats/tokenizer.py: encode (no BOS); reference/generate.py: the prompt's cut",
    _encode_reference,
    _encode_cases, _encode_example, _encode_shape,
    properties=(Property("the ids hold no [PAD], [BOS] or [EOS]", _encode_no_control),
                Property("the ids decode back to the prompt", _encode_round_trip),
                Property("a prompt longer than max_tokens keeps its last max_tokens ids",
                         _encode_keeps_last)),
    mistakes=(Mistake("Grok-1 adds no [BOS]: the official runner feeds sp.encode(prompt) as it "
                      "is (a Llama-style port that prepends id 1 gives the model a token it "
                      "never saw in front of a prompt)", _encode_bos),
              Mistake("keep the LAST max_tokens ids, ids[-max_tokens:]: the model continues "
                      "the end of the prompt, so a long prompt loses its beginning",
                      _encode_first),
              Mistake("do not add a space in front: SentencePiece puts its own ▁ before the "
                      "text (add_dummy_prefix), so ' ' + prompt starts with ▁▁", _encode_space),
              Mistake("a prompt ends without [EOS]: id 2 tells the model the text is over",
                      _encode_eos)))


# ------------------------------------------------------------------ 0b. decode

def _decode_reference(sp, ids):
    return codepoints(decode_text(sp, ids))


def _piece_runs(sp, ids):
    """Where a piece that is not a byte starts: the places ids may be cut or have a control
    token put in without splitting a character's bytes."""
    return [k for k in range(len(ids) + 1) if k == len(ids) or not sp.is_byte(ids[k])]


def _decode_cases(st, hnp):
    @st.composite
    def cases(draw):
        sp = TinySentencePiece()
        text = draw(_texts(st))
        ids = sp.encode(text)
        cuts = _piece_runs(sp, ids)
        start = draw(st.sampled_from(cuts[:-1] or [0]))   # the whole text, or its tail
        ids = ids[start:]
        cuts = _piece_runs(sp, ids)
        for _ in range(draw(st.integers(0, 2))):          # control tokens, between characters
            at = draw(st.sampled_from(cuts))
            ids = ids[:at] + [draw(st.sampled_from([0, 1, 2]))] + ids[at:]
            cuts = _piece_runs(sp, ids)
        ids = np.array(ids, dtype=np.int64)
        case = {"sp": sp, "ids": ids, "_pieces": _pieces_of(sp, ids)}
        if start == 0:
            case["_text"] = text
        return case
    return cases()


def _decode_example():
    sp = TinySentencePiece()
    ids = np.array([sp.bos_id()] + sp.encode("Hello world, I ❤ Grok 🦊 42!") + [sp.eos_id()],
                   dtype=np.int64)
    return {"sp": sp, "ids": ids, "_pieces": _pieces_of(sp, ids),
            "_text": "Hello world, I ❤ Grok 🦊 42!"}


def _text_lines(got, want) -> list:
    return [f"expected: {as_text(want)!r}", f"got:      {as_text(got)!r}"]


def _decode_round_trip(ex, fn, case):
    if case.get("_text") is None:
        return
    got = call(ex, fn, case)[0]
    want = codepoints(case["_text"])
    if got.shape != want.shape or not np.array_equal(got, want):
        raise Failed(["decoding the ids of a text must give the text back (control tokens "
                      "aside)", *_text_lines(got, want)], case, [got])


def _decode_controls(ex, fn, case):
    sp, ids = case["sp"], case["ids"]
    plain = np.array([i for i in ids.tolist() if not sp.is_control(i)], dtype=np.int64)
    wrapped = np.concatenate([[sp.bos_id()], plain, [sp.eos_id(), sp.pad_id()]]).astype(np.int64)
    a = call(ex, fn, dict(case, ids=plain))[0]
    b = call(ex, fn, dict(case, ids=wrapped))[0]
    if a.shape != b.shape or not np.array_equal(a, b):
        raise Failed(["control tokens ([PAD], [BOS], [EOS]) decode to nothing: adding them "
                      "must not change the text",
                      f"without them: {as_text(a)!r}", f"with them:    {as_text(b)!r}"],
                     dict(case, ids=wrapped, _pieces=_pieces_of(sp, wrapped)), [b])


def _decode_compare(ex, got, want, case):
    if got[0].shape != want[0].shape or not np.array_equal(got[0], want[0]):
        raise Failed(["text: yours differs from SentencePiece's decode",
                      *_text_lines(got[0], want[0])], case)


# The mistakes, as a student writes them: a text from the pieces one at a time.
def _decode_variant(sp, ids, *, bytes_alone=False, latin1=False, spaces=True, strip="one",
                    controls=True):
    parts, run, first = [], bytearray(), True
    for i in ids.tolist():
        if controls and sp.is_control(i):
            continue
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            b = int(piece[3:5], 16)
            if bytes_alone:
                parts.append(bytes([b]).decode("utf-8", errors="replace"))
            elif latin1:
                parts.append(chr(b))
            else:
                run.append(b)
            first = False
            continue
        if run:
            parts.append(bytes(run).decode("utf-8", errors="replace"))
            run.clear()
        if first and strip == "one" and piece.startswith(SPACE):
            piece = piece[1:]
        first = False
        parts.append(piece.replace(SPACE, " ") if spaces else piece)
    if run:
        parts.append(bytes(run).decode("utf-8", errors="replace"))
    text = "".join(parts)
    if strip == "all":
        text = text.lstrip(" " if spaces else SPACE)
    return codepoints(text)


DECODE = Exercise(
    "decode", "decode", ("sp", "ids"), ("text",),
    "token ids back to text: ▁, control pieces and byte fallback",
    "01_tokenizer.py",
    "minigrok/exercises/tokens.py: decode_text (SentencePiece's decode, as formats/tokenizer.py "
    "calls it)",
    _decode_reference,
    _decode_cases, _decode_example,
    # The length of a text is what is being checked: the comparison shows both texts.
    lambda c: [],
    properties=(Property("the ids of a text decode back to that text", _decode_round_trip),
                Property("control tokens ([PAD], [BOS], [EOS]) decode to nothing",
                         _decode_controls)),
    mistakes=(Mistake("join consecutive byte pieces into one bytes object and decode that as "
                      "UTF-8: a character outside the vocabulary is spelled as 2 to 4 byte "
                      "pieces (<0xF0><0x9F><0xA6><0x8A>), and each one alone is not UTF-8 "
                      "(U+FFFD)", lambda sp, ids: _decode_variant(sp, ids, bytes_alone=True)),
              Mistake("▁ (U+2581) is SentencePiece's space: replace it with ' '",
                      lambda sp, ids: _decode_variant(sp, ids, spaces=False)),
              Mistake("drop the one ▁ SentencePiece put in front of the text: the first piece "
                      "(▁Hello) loses its leading space",
                      lambda sp, ids: _decode_variant(sp, ids, strip="none")),
              Mistake("drop only ONE leading space, the ▁ SentencePiece added: a text that "
                      "began with a space (▁▁Hello) keeps it; lstrip() removes it",
                      lambda sp, ids: _decode_variant(sp, ids, strip="all")),
              Mistake("control pieces ([PAD], [BOS], [EOS]) decode to nothing, not to their "
                      "names", lambda sp, ids: _decode_variant(sp, ids, controls=False)),
              Mistake("a byte piece <0xNN> is one byte of UTF-8, not the character chr(0xNN): "
                      "collect the bytes, then decode them as UTF-8",
                      lambda sp, ids: _decode_variant(sp, ids, latin1=True))),
    compare=_decode_compare)
