"""MASTER's pre-training batches: every task labels exactly the positions it masked, and nothing else."""

from __future__ import annotations

import random

import pytest
import torch

from keel.core.errors import ConfigError
from keel.retrieval.data.beir import BeirData, Passage
from keel.retrieval.master.data import PretrainingCollator, next_passages, stage_plan
from keel.retrieval.master.masking import IGNORE, Corruption, KeywordWeights, TokenizedText

MASK, SPECIALS = 103, frozenset({0, 101, 102, 103})


def random_text(rng: random.Random, words: int) -> TokenizedText:
    lengths = [rng.choice([1, 1, 1, 2, 3]) for _ in range(words)]
    ids, groups, position = [101], [], 1
    for length in lengths:
        groups.append(list(range(position, position + length)))
        ids += [rng.randrange(1000, 2000) for _ in range(length)]
        position += length
    return TokenizedText([*ids, 102], groups, [f"w{rng.randrange(30)}" for _ in range(words)])


def collator(tasks: list[str], **kwargs) -> PretrainingCollator:
    # every chosen token becomes [MASK], so the masked positions can be read off the inputs
    corruption = Corruption(MASK, 30522, SPECIALS, mask_fraction=1.0, random_fraction=0.0)
    return PretrainingCollator(tasks, KeywordWeights({}, {}, 1), corruption, **kwargs)


def original(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.where(labels != IGNORE, labels, inputs)


def test_each_pass_and_task_labels_exactly_its_masked_positions() -> None:
    rng = random.Random(0)
    texts = [random_text(rng, n) for n in (12, 20, 7)]
    batch = collator(["keywords", "neighbour", "complementary"])([(i, t, None) for i, t in enumerate(texts)])
    names = ["main_encoder", "keywords", "neighbour_encoder", "neighbour", "complementary_encoder", "complementary"]
    assert {k for k in batch if k.endswith("_labels")} == {f"{n}_labels" for n in names}
    for name in names:
        inputs, labels, mask = batch[f"{name}_input_ids"], batch[f"{name}_labels"], batch[f"{name}_attention_mask"]
        assert torch.equal(labels != IGNORE, inputs == MASK), name
        assert not (labels[mask == 0] != IGNORE).any(), name  # never on padding
    for row, text in enumerate(texts):
        n = len(text.ids)
        for name in ("main_encoder", "keywords", "complementary_encoder", "complementary"):
            assert original(batch[f"{name}_input_ids"], batch[f"{name}_labels"])[row, :n].tolist() == text.ids
        words = text.word_positions
        assert 0 < (batch["main_encoder_labels"][row] != IGNORE).sum() <= round(0.3 * len(words))
        encoder = set(torch.nonzero(batch["complementary_encoder_labels"][row] != IGNORE).flatten().tolist())
        decoder = set(torch.nonzero(batch["complementary_labels"][row] != IGNORE).flatten().tolist())
        assert not encoder & decoder
        assert sorted(encoder | decoder) == words  # the two masks cover every word token once


def test_mask_rates_and_whole_words() -> None:
    rng = random.Random(1)
    texts = [random_text(rng, 60) for _ in range(8)]
    batch = collator(["keywords"])([(i, t, None) for i, t in enumerate(texts)])
    for row, text in enumerate(texts):
        tokens = len(text.word_positions)
        encoder = set(torch.nonzero(batch["main_encoder_labels"][row] != IGNORE).flatten().tolist())
        keywords = set(torch.nonzero(batch["keywords_labels"][row] != IGNORE).flatten().tolist())
        assert abs(len(encoder) - 0.3 * tokens) <= 3
        assert abs(len(keywords) - 0.5 * tokens) <= 3
        for word in text.words:
            assert set(word) <= keywords or not set(word) & keywords


def test_every_task_list_has_the_main_pass_and_mlm_alone_has_nothing_else() -> None:
    rng = random.Random(3)
    items = [(i, random_text(rng, 12), None) for i in range(3)]
    labels = {k for k in collator(["neighbour"])(items) if k.endswith("_labels")}
    assert labels == {"main_encoder_labels", "neighbour_encoder_labels", "neighbour_labels"}
    assert {k for k in collator(["mlm"])(items) if k.endswith("_labels")} == {"main_encoder_labels"}


@pytest.mark.parametrize("task", ["keywords", "neighbour"])
def test_decoder_masks_follow_the_keyword_weights(task: str) -> None:
    """With 1/frequency weights a word seen once is masked before words seen a thousand times."""
    words = 10
    ids = [101, *range(1000, 1000 + words), 102]
    keys = ["common"] * words
    keys[7] = "rare"  # in the second half, which the neighbour decoder reads
    text = TokenizedText(ids, [[p] for p in range(1, words + 1)], keys)
    weights = KeywordWeights({}, {"common": 1000, "rare": 1}, 10)
    corruption = Corruption(MASK, 30522, SPECIALS, mask_fraction=1.0, random_fraction=0.0)
    collate = PretrainingCollator([task], weights, corruption)
    rare_position = 8 if task == "keywords" else 3  # the neighbour decoder's text restarts after [CLS]
    hits = 0
    for index in range(200):
        labels = collate([(index, text, None)])[f"{task}_labels"][0]
        hits += int(labels[rare_position] != IGNORE)
    assert hits >= 190  # a uniform 50% mask would hide it about 100 times
    uniform = PretrainingCollator([task], KeywordWeights({}, {}, 10), corruption)
    uniform_hits = sum(
        int(uniform([(i, text, None)])[f"{task}_labels"][0][rare_position] != IGNORE) for i in range(200)
    )
    assert 60 <= uniform_hits <= 140


def test_neighbour_task_encodes_the_first_half_and_decodes_the_second() -> None:
    rng = random.Random(2)
    text = random_text(rng, 10)
    batch = collator(["neighbour"])([(0, text, None)])
    assert "main_encoder_input_ids" in batch  # the whole passage's MLM pass is part of every pre-training
    first, second = text.segment(0, 5), text.segment(5, 10)
    encoded = original(batch["neighbour_encoder_input_ids"], batch["neighbour_encoder_labels"])[0]
    decoded = original(batch["neighbour_input_ids"], batch["neighbour_labels"])[0]
    assert encoded[: len(first.ids)].tolist() == first.ids
    assert decoded[: len(second.ids)].tolist() == second.ids


def test_next_mode_decodes_the_following_passage() -> None:
    rng = random.Random(3)
    text, following = random_text(rng, 8), random_text(rng, 9)
    batch = collator(["neighbour"], neighbour="next")([(0, text, following), (1, following, None)])
    encoded = original(batch["neighbour_encoder_input_ids"], batch["neighbour_encoder_labels"])
    decoded = original(batch["neighbour_input_ids"], batch["neighbour_labels"])
    assert encoded[0, : len(text.ids)].tolist() == text.ids
    assert decoded[0, : len(following.ids)].tolist() == following.ids
    # the last passage of a document falls back to its own halves
    assert decoded[1, : len(following.segment(4, 9).ids)].tolist() == following.segment(4, 9).ids


def test_generator_inputs_mask_positions_for_the_generator() -> None:
    rng = random.Random(4)
    texts = [random_text(rng, 15), random_text(rng, 6)]
    batch = collator(["keywords", "corrupted"], generator_probability=0.3)([(i, t, None) for i, t in enumerate(texts)])
    positions = batch["generator_positions"]
    assert torch.equal(batch["generator_input_ids"] == MASK, positions)
    for row, text in enumerate(texts):
        assert batch["text_ids"][row, : len(text.ids)].tolist() == text.ids
        assert torch.nonzero(batch["word_positions"][row]).flatten().tolist() == text.word_positions
        assert set(torch.nonzero(positions[row]).flatten().tolist()) <= set(text.word_positions)


def test_batches_are_a_function_of_their_items_and_seed() -> None:
    rng = random.Random(5)
    items = [(i, random_text(rng, 12), None) for i in range(3)]
    make = collator(["keywords", "complementary"])
    a, b = make(items), make(items)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = collator(["keywords", "complementary"], seed=1)(items)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_next_passages_follow_documents_by_title() -> None:
    corpus = {p.id: p for p in [Passage("a0", "x", "A"), Passage("a1", "y", "A"), Passage("b0", "z", "B"),
                                Passage("u0", "u", ""), Passage("u1", "v", "")]}  # fmt: skip
    assert next_passages(BeirData(corpus, {})) == [1, -1, -1, -1, -1]


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown MASTER task"):
        collator(["keyword"])
    with pytest.raises(ConfigError, match="neighbour"):
        collator(["neighbour"], neighbour="previous")
    with pytest.raises(ConfigError, match="mlm_probability"):
        collator(["keywords"], mlm_probability=1.5)
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_plan({"pretrain": 1, "distill": 2})
    assert stage_plan({"pretrain": 0, "finetune": 3}) == [("finetune", 3)]
