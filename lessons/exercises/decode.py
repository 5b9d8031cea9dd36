"""Exercise decode: token ids back to text, SentencePiece's way (lesson 01).

Check your work:  python -m minigrok exercises check decode
"""

import numpy as np


def decode(sp, ids):
    """The text that token ids spell, as sp.decode(ids) gives it; write it from the pieces.

    sp:  a SentencePiece tokenizer's pieces: sp.id_to_piece(i) -> str, sp.is_control(i)
         (True for [PAD] 0, [BOS] 1, [EOS] 2), sp.is_byte(i) (True for the 256 byte pieces
         '<0x00>' ... '<0xFF>'). The checker's small tokenizer has no sp.decode: you write it.
    ids: int [N]
    returns the text as codepoints(text) (below): the checker compares numbers

    The rules:
      - a control piece is not text: it decodes to nothing;
      - '▁' (U+2581) in a piece is a space;
      - SentencePiece put one '▁' in front of the text when it encoded it: the first piece
        of the text loses one leading '▁' (and only one);
      - a character outside the vocabulary is spelled as its UTF-8 bytes, one byte piece
        each ('🦊' is <0xF0> <0x9F> <0xA6> <0x8A>): one byte alone is not UTF-8.
    The checker only gives you byte pieces that spell whole characters.
    """
    raise NotImplementedError


def codepoints(text):
    """A str as the checker wants it: int64 [len(text)], each character's code point."""
    return np.array([ord(c) for c in text], dtype=np.int64)
