"""Exercise encode_prompt: a prompt's token ids, as Grok-1's official runner makes them (lesson 01).

Check your work:  python -m minigrok exercises check encode_prompt
"""

import numpy as np  # noqa: F401  (you will want it)


def encode_prompt(sp, prompt, max_tokens):
    """The token ids the model is given for ``prompt``.

    sp:         a SentencePiece tokenizer (sentencepiece.SentencePieceProcessor, or the
                checker's small one with the same methods): sp.encode(text) -> list of ids,
                sp.bos_id() = 1, sp.eos_id() = 2, sp.pad_id() = 0, sp.id_to_piece(i)
    prompt:     str
    max_tokens: int >= 1, the room the context leaves for the prompt (sequence_len minus the
                tokens still to generate)
    returns int [T], T = min(number of ids, max_tokens)

    Do what the official runner does: SentencePiece's ids for the text and nothing else
    (SentencePiece already puts its ▁ in front of the first word). When the prompt does not
    fit, the model continues its end.
    """
    raise NotImplementedError
