# %% [markdown]
# # Lesson 01: the tokenizer
#
# **Goal.** Turn text into the integer ids Grok-1 reads, and back, with the real
# `tokenizer.model` that ships with the official release, exactly as the official runner does.
#
# **The idea.** A language model never sees characters. A *tokenizer* cuts text into
# pieces from a fixed vocabulary and replaces each piece by its index. Grok-1 uses a
# SentencePiece model with $V = 131072 = 128 \cdot 1024$ pieces. Pieces that begin a word
# carry a `▁` (U+2581) standing for the space before it, so decoding is just concatenation
# with `▁` turned back into spaces. Four ids are special: 0 `[PAD]`, 1 `[BOS]`, 2 `[EOS]`,
# 3 `[UNK]`. A character the vocabulary lacks is not lost: it is spelled as its UTF-8 bytes,
# one `<0xNN>` piece per byte (*byte fallback*).
#
# Two facts matter for matching the official code:
# - the official runner encodes a prompt with plain `encode(text)`: **no BOS token** in front
#   (lesson 13 shows what adding one does to the logits);
# - id 0 is padding, and the model never attends to a padding key (lesson 07).
#
# **The code.** `minigrok/formats/tokenizer.py`: `find_tokenizer`, `load_tokenizer`, `encode`,
# `decode`, and `stream_piece` for printing text while it is generated.

# %%
import sys

import _common as C
from minigrok.formats import tokenizer as tok

args = C.setup(1, "the tokenizer")
try:
    path = tok.find_tokenizer(args.tokenizer, args.checkpoint)
except C.MinigrokError as e:
    sys.exit(f"minigrok: error: {e}")
sp = tok.load_tokenizer(path)
print("tokenizer file:", path, f"({path.stat().st_size:,} bytes)")
print("vocabulary size:", sp.get_piece_size())
for i in range(8):
    print(f"  id {i}: {sp.id_to_piece(i)!r}")

# %% [markdown]
# ## Encoding a sentence
# Every lesson runs the model on the same 28 ids: this little story, of the kind the
# built-in model was trained on. Most words are one token with their leading space (`▁`);
# punctuation is a token of its own. Numbers are spelled one digit per token: `42` becomes
# `▁`, `4`, `2` (below).

# %%
ids = tok.encode(sp, C.SENTENCE)
print(C.SENTENCE)
print("ids:   ", ids)
print("pieces:", [sp.id_to_piece(i) for i in ids])
assert ids == C.TOKENS, "lessons/_common.py TOKENS must be this sentence's ids"
assert [sp.id_to_piece(i) for i in ids] == C.PIECES
print("decoded back:", repr(tok.decode(sp, ids)))
print("'is 42.' ->", [sp.id_to_piece(i) for i in tok.encode(sp, "is 42.")])

# %% [markdown]
# ## Byte fallback and rare words
# A fox emoji is not in the vocabulary: it becomes its four UTF-8 bytes. Decoding one of
# those pieces alone gives U+FFFD (the replacement character): a stream printer must hold
# bytes back until the character is complete. That is what `stream_piece` does.

# %%
for text in ["naïve café", "🦊", "def f(x): return x**2", "Grok-1 has 314 billion parameters."]:
    pieces = [sp.id_to_piece(i) for i in tok.encode(sp, text)]
    print(f"{text!r:42} {len(pieces):>2} tokens  {pieces}")

fox = tok.encode(sp, "a 🦊!")
print("one piece at a time:", [tok.decode(sp, [i]) for i in fox])
printed, shown = "", []
for n in range(1, len(fox) + 1):
    piece = tok.stream_piece(sp, fox[:n], printed)
    printed += piece
    shown.append(piece)
shown.append(tok.stream_piece(sp, fox, printed, final=True))
print("stream_piece prints:", shown, "->", repr("".join(shown)))

# %% [markdown]
# ## No BOS
# SentencePiece can add a BOS for you; Grok-1's runner does not ask it to. The prompt the
# model sees is exactly the ids above. The control tokens decode to nothing.

# %%
print("with add_bos:", sp.encode("The answer", add_bos=True))
print("as Grok-1 encodes a prompt:", tok.encode(sp, "The answer"))
print("decode([1, 422, 2]) =", repr(tok.decode(sp, [1, 422, 2])))

# %% [markdown]
# ## Try this
# - Tokenize your name, a sentence in another language, a line of code. Which costs most
#   tokens per character?
# - `python -m minigrok tokenize "your text"` prints the same table from the command line.
# - Find the id of `▁Grok` (hint: `sp.piece_to_id`). Is "Grok" one piece or several?
# - Exercises `encode_prompt` and `decode`: a prompt's ids as the official runner makes them
#   (no BOS, a long prompt keeps its end), and SentencePiece's decode from the pieces (▁,
#   control pieces, byte fallback): `python -m minigrok exercises check encode_prompt`
#   (then `decode`).
#
# ## On the real model
# The tokenizer is the same file for the tiny and the real checkpoint, so everything above
# *is* the real thing. What each id costs comes next: it selects one row of the
# $131072 \times 6144$ float32 embedding matrix (lesson 04).

# %%
row = C.GROK1.emb_size * 4
print(f"one token id selects a {C.GROK1.emb_size}-float row: {C.fmt_bytes(row)} of the "
      f"{C.fmt_bytes(C.GROK1.vocab_size * row)} embedding matrix")
print(f"the context holds up to {C.GROK1.sequence_len} tokens")
