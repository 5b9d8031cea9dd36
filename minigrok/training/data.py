"""From stories to batches: tokenising, the reduced vocabulary, training windows.

Each story is encoded with Grok-1's tokenizer exactly as a prompt is (no BOS, as the
official runner encodes prompts) and followed by EOS; the stories are laid end to end in
one stream. A training window starts where a story starts, so that position 0 of a window
is what position 0 of ``generate --prompt "Once upon a time"`` is; it runs T + 1 tokens on,
into the next story when the story is shorter.

The reduced vocabulary is every id the training stories use plus EOS, in increasing order,
and one last entry standing for all the other ids of the 131,072 (network.py).
"""

import numpy as np


def encode_stories(sp, stories, eos: int):
    """stories: list of str -> (stream [n] int32 of every story + EOS, starts [S] int64:
    where each story begins)."""
    pieces = sp.encode(list(stories))
    lengths = np.array([len(p) + 1 for p in pieces], dtype=np.int64)
    stream = np.empty(int(lengths.sum()), dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, ids in zip(starts, pieces):
        stream[start:start + len(ids)] = ids
        stream[start + len(ids)] = eos
    return stream, starts


def reduced_vocabulary(stream, eos: int) -> np.ndarray:
    """The full ids the reduced vocabulary keeps, increasing: [V' - 1] int64."""
    return np.union1d(np.unique(stream), [eos]).astype(np.int64)


def reducer(vocab, vocab_size: int) -> np.ndarray:
    """Full id -> reduced id [vocab_size] int32: vocab[i] -> i, any other id -> len(vocab)
    (the shared last row)."""
    table = np.full(vocab_size, len(vocab), dtype=np.int32)
    table[vocab] = np.arange(len(vocab), dtype=np.int32)
    return table


def windows(stream, starts, T: int) -> np.ndarray:
    """The story starts that have T + 1 tokens after them in the stream: [W] int64."""
    return starts[starts + T + 1 <= len(stream)]


def batch(stream, starts, rng: np.random.Generator, B: int, T: int):
    """B windows from random story starts -> (inputs [B, T], targets [B, T]) of the stream's
    ids (targets are the inputs shifted by one)."""
    chosen = rng.choice(starts, size=B)
    rows = stream[chosen[:, None] + np.arange(T + 1)]                           # [B, T+1]
    return rows[:, :-1], rows[:, 1:]


def unigram_loss(train_stream, heldout_targets, vocab_size: int) -> float:
    """Held-out cross-entropy (nats/token) of the training stream's unigram frequencies, with
    add-one smoothing over the whole vocabulary: the baseline a model must beat."""
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(heldout_targets).ravel()].mean())
