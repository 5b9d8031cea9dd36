"""What the trained model has learned, in numbers (the README's table; a benchmark, not a test).

Each measure runs the reference forward (reference/model.py) on the model as released:
int8 weights, the full 131,072-row embedding. ``params`` is the reference's parameter tree
(formats/checkpoint.model_params of an opened checkpoint, or the expanded compact form).

* copy_ratio: a random sequence of 32 tokens shown twice; the mean loss on the second copy
  over the mean loss on the first. A model that copies from its context predicts the second
  copy far better (well under 0.5); random weights give 1.0.
* list_copy_ratio: the same, in the stories' own frame: in a held-out memory game ("Listen:
  luna, cakes, ..." and the list said back), the mean loss on the list said back over the
  mean loss on the list said first. The lists are drawn from the whole lexicon, so only
  copying from the context predicts the second saying.
* word_share: the share of the words of generated text that are words of the stories'
  lexicon (the dictionary; random weights emit tokens from all 131,072).
* unseen_mass: the probability the model gives, on held-out text, to all the token ids
  that training never saw (the reduced vocabulary's shared row, network.py).
"""

import re

import numpy as np

from ..reference.generate import generate_tokens
from ..reference.model import forward
from .stories import MEMORY_GAME

BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")            # SentencePiece's byte fallback


def _log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def copy_ratio(params, cfg, vocab, rng: np.random.Generator, count: int = 16,
               length: int = 32) -> float:
    """Mean over ``count`` random sequences (of ids drawn from ``vocab``) of the loss on the
    second copy divided by the loss on the first (the first token of each copy excluded:
    nothing predicts it)."""
    ratios = []
    for _ in range(count):
        ids = rng.choice(np.asarray(vocab), size=length)
        seq = np.concatenate([ids, ids])                                       # [2n]
        logp = _log_softmax(forward(params, cfg, seq))                         # [2n, V]
        nll = -logp[np.arange(2 * length - 1), seq[1:]]                        # [2n - 1]
        ratios.append(nll[length:].mean() / nll[:length - 1].mean())
    return float(np.mean(ratios))


def _char_spans(sp, ids, text):
    """[(begin, end)] of each token's characters in ``text``, or None where the pieces do not
    spell the text out (a normalised character). A byte piece (<0x0A>) is one character;
    the tokenizer's dummy prefix space, if any, is dropped."""
    pieces = [" " if BYTE_PIECE.fullmatch(p) else p.replace("\u2581", " ")
              for p in (sp.id_to_piece(int(i)) for i in ids)]
    lengths = [len(p) for p in pieces]
    spelled = "".join(pieces)
    shift = len(spelled) - len(text)
    if shift not in (0, 1) or spelled[shift:].replace("\n", " ") != text.replace("\n", " "):
        return None
    ends = np.cumsum(lengths) - shift
    return list(zip(ends - np.asarray(lengths), ends))


def list_copy_ratio(params, cfg, sp, texts, count: int = 16) -> float:
    """Mean over the first ``count`` memory games in ``texts`` (stories.MEMORY_GAME; stories
    longer than the context are skipped) of the loss on the list said back divided by the
    loss on the list said first, each over the tokens of its words (the space before each
    word included, as the tokenizer glues it to the word). The story is encoded whole, as
    the model reads it, and the lists' tokens found by their characters."""
    ratios = []
    for text in texts:
        games = list(MEMORY_GAME.finditer(text))
        ids = np.asarray(sp.encode(text), dtype=np.int64)
        spans = _char_spans(sp, ids, text) if games and len(ids) <= cfg.sequence_len else None
        if spans is None:
            continue
        logits = forward(params, cfg, ids)                                     # [T, V]

        def nll(a, b):              # the mean loss on the tokens inside [a - 1, b)
            rows = np.asarray([i for i, (t0, t1) in enumerate(spans)
                               if i > 0 and t0 >= a - 1 and t1 <= b])
            return -_log_softmax(logits[rows - 1])[np.arange(len(rows)), ids[rows]].mean()
        for game in games:
            ratios.append(nll(*game.span(2)) / nll(*game.span(1)))
            if len(ratios) == count:
                return float(np.mean(ratios))
    if not ratios:
        raise ValueError("list_copy_ratio: no memory game in the texts fits the context")
    return float(np.mean(ratios))


def unseen_mass(params, cfg, vocab, windows) -> float:
    """Mean probability, over every position of ``windows`` [W, T] (full ids), of all the
    ids outside ``vocab`` together."""
    mass = []
    for tokens in np.asarray(windows):
        p = np.exp(_log_softmax(forward(params, cfg, tokens)))                 # [T, V]
        mass.append(1.0 - p[:, np.asarray(vocab)].sum(axis=-1).mean())
    return float(np.mean(mass))


def sample(params, cfg, sp, prompt: str, max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0) -> str:
    """The prompt and its continuation, as text (the reference's generation loop)."""
    ids = sp.encode(prompt)
    new = list(generate_tokens(params, cfg, ids, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed))
    return sp.decode(ids + [i for i in new if i != cfg.eos_token])


WORD = re.compile(r"[A-Za-z']+")


def word_share(texts, lexicon) -> float:
    """The share of the words of ``texts`` (runs of letters and apostrophes) that are in
    ``lexicon`` (lower-case words)."""
    words = [w.lower() for t in texts for w in WORD.findall(t)]
    return sum(w in lexicon for w in words) / max(1, len(words))
