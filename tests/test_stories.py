"""The story generator: deterministic, disjoint splits, a closed lexicon, correct English."""

import random
import re

import pytest
from hypothesis import given, strategies as st

from minigrok.training import stories

TRAIN = stories.corpus("train", 400)
HELDOUT = stories.corpus("heldout", 400)
VOWELS = tuple("aeiou")


def test_deterministic_and_independent_of_count():
    assert stories.corpus("train", 5, seed=3) == stories.corpus("train", 5, seed=3)
    assert stories.corpus("train", 10, seed=3)[:5] == stories.corpus("train", 5, seed=3)
    assert stories.corpus("train", 5, seed=4) != stories.corpus("train", 5, seed=3)


def test_splits_are_disjoint():
    assert not set(TRAIN[:200]) & set(HELDOUT[:200])


def test_unknown_split():
    with pytest.raises(ValueError):
        stories.corpus("test", 1)


def test_every_word_is_in_the_lexicon():
    lexicon = stories.words()
    assert len(lexicon) <= 1600
    assert all(re.fullmatch(r"[a-z']+", w) for w in lexicon)
    for text in TRAIN[:250] + HELDOUT[:250]:
        assert set(stories.split_words(text)) <= lexicon, text


def test_split_words():
    assert stories.split_words('"Mia\'s cat!" Don\'t go.') == ["mia", "'s", "cat", "don't", "go"]


def prose(text: str) -> str:
    """The story without its memory games' lists (random words, not sentences)."""
    return stories.MEMORY_GAME.sub("", text)


def test_articles_agree():
    for text in TRAIN + HELDOUT:
        w = stories.split_words(prose(text))
        for article, word in zip(w, w[1:]):
            assert not (article == "a" and word.startswith(VOWELS)), text
            assert not (article == "an" and not word.startswith(VOWELS)), text


def test_lengths_and_openings():
    for text in TRAIN:
        assert 60 <= len(stories.split_words(text)) <= 260, text
    once = sum(t.startswith("Once upon a time") for t in TRAIN) / len(TRAIN)
    assert 0.55 <= once <= 0.85


def test_memory_games_repeat_the_list_exactly():
    with_game = [t for t in TRAIN if "Listen:" in t]
    assert 0.3 <= len(with_game) / len(TRAIN) <= 0.5
    lexicon = stories.words()
    for text in TRAIN + HELDOUT:
        games = stories.memory_games(text)
        assert len(games) == text.count("Listen:"), text
        for said, back in games:
            assert said == back and 6 <= len(said) <= 16 and set(said) <= lexicon, text


def test_typography():
    for text in TRAIN + HELDOUT:
        assert text.count('"') % 2 == 0, text
        assert "  " not in text and "\n\n" not in text and text == text.strip(), text
        assert not re.search(r" [,.!?]", text), text
        assert text[-1] in '.!"', text
        for paragraph in text.split("\n"):
            assert paragraph.count('"') % 2 == 0, text
        # A sentence, a paragraph or a quotation starts with a capital; only a memory
        # game's repeated list (after a colon) starts in lower case.
        assert not re.search(r'(^|[.!?] |\n|, ")[a-z]', text), text


def test_pronouns_agree():
    # A story whose characters are all of one sex (its names, its grown-up, the old woman
    # of one episode; animals are "it") must not use the other sex's pronouns anywhere.
    girls, boys = set(stories.GIRLS), set(stories.BOYS)
    checked = 0
    for text in TRAIN + HELDOUT:
        names = set(re.findall(r"[A-Z][a-z]+", text)) & (girls | boys)
        w = set(stories.split_words(prose(text)))
        if names <= girls and not w & {"dad", "grandpa"}:
            assert not w & {"he", "him", "his"}, text
            checked += 1
        if names <= boys and not w & {"mom", "grandma", "woman"}:
            assert not w & {"she", "her", "hers"}, text
            checked += 1
    assert checked > 50


@given(st.integers(0, 2**32))
def test_any_seed_gives_a_valid_story(seed):
    text = stories.story(random.Random(seed))
    assert 80 <= len(stories.split_words(text)) <= 200
    assert set(stories.split_words(text)) <= stories.words()
