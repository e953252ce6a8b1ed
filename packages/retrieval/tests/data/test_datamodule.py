"""Groups of (query, positive, negatives): the choice of negatives, shared ids of duplicates, the batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.core.errors import DataError
from keel.retrieval.data import GroupDataset, RetrievalDataModule, TrainingPair, read_beir, text_table

TEXT_IDS = {f"d{i}": i for i in range(8)} | {"copy-of-d0": 0}


def test_hard_negatives_come_first_and_random_ones_fill_up() -> None:
    pairs = [TrainingPair("q", ["d0"], ["d1", "copy-of-d0", "d2"])]
    dataset = GroupDataset(pairs, TEXT_IDS, 8, negatives=4, seed=3)
    group = dataset[0]
    assert group.passages[0] == 0
    assert group.relevant == [0]
    assert group.passages[1:3] == [1, 2], "the hard negatives (without the positive's copy) first"
    assert len(set(group.passages)) == 5
    assert 0 not in group.passages[1:]
    assert dataset[0] == group, "the draw is fixed per item"


def test_extra_hard_negatives_are_sampled_and_each_positive_is_a_group() -> None:
    pairs = [TrainingPair("q", ["d0", "d7"], ["d1", "d2", "d3", "d4"])]
    dataset = GroupDataset(pairs, TEXT_IDS, 8, negatives=2, seed=0)
    assert len(dataset) == 2
    assert [g.passages[0] for g in dataset] == [0, 7]
    assert all(set(g.passages[1:]) <= {1, 2, 3, 4} for g in dataset)
    assert dataset[1].relevant == [7, 0]
    assert len(GroupDataset(pairs, TEXT_IDS, 8, 2, per_query=True)) == 1


def test_too_small_a_corpus_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too few passages"):
        GroupDataset([TrainingPair("q", ["d0"])], TEXT_IDS, 3, negatives=3)


def test_duplicate_texts_share_one_id(tiny_beir: Path) -> None:
    texts, ids = text_table(read_beir(tiny_beir))
    assert ids["p-cat"] == ids["p-cat-copy"]
    assert len(texts) == 9


def test_batches(tiny_beir: Path, tiny_model_dir: Path) -> None:
    data = RetrievalDataModule(str(tiny_beir), str(tiny_model_dir), negatives=2, batch_size=2, eval_batch_size=3)
    data.setup()
    assert len(data.dataset("train")) == 5, "q1 has two positives (a text and its copy): two groups"
    batch = next(iter(data.train_dataloader()))
    assert batch["query_input_ids"].shape[0] == 2
    assert batch["passage_input_ids"].shape[0] == 6
    assert batch["passage_ids"].shape == (6,)
    assert batch["relevant_ids"].shape[0] == 2
    assert (batch["query_input_ids"][:, 0] == 101).all(), "sequences start with [CLS]"
    assert (batch["passage_ids"][::3] == batch["relevant_ids"][:, 0]).all(), "each group starts with its positive"
    test = next(iter(data.test_dataloader()))
    assert test["query_input_ids"].shape[0] == 3
    assert (test["relevant_ids"] >= -1).all()
