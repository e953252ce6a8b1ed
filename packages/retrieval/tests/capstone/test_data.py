"""CAPSTONE's expanded batches: the curriculum's views in part order, the real query never appended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.core.distill.data import encode, teacher_tokenizer
from keel.retrieval.capstone import ExpansionCollator, join_expansion
from keel.retrieval.data.datamodule import Group, GroupCollator

TEXTS = ["open ( file ) opens a file and returns a file object", "a socket is an endpoint for communication"]
QUERY = "open a file for reading"
EXPANSIONS = [
    ["socket options", "open a file for reading now", QUERY, "read a file"],  # the real query is among them
    ["send data over a socket", "close the socket", "open a file quickly"],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return teacher_tokenizer(str(tiny_model_dir))


def collator(tokenizer, curriculum: str, training: bool = True) -> ExpansionCollator:
    return ExpansionCollator(tokenizer, TEXTS, EXPANSIONS, 16, 32, 8, curriculum, parts=3, training=training)


def expanded(tokenizer, text: str, query: str | None) -> list[int]:
    (passage,) = encode(tokenizer, [text], 32)
    return join_expansion(passage, None if query is None else encode(tokenizer, [query], 8)[0])


def row(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


def test_join_expansion_drops_the_query_cls() -> None:
    assert join_expansion([101, 5, 6, 102], [101, 7, 102]) == [101, 5, 6, 102, 7, 102]
    assert join_expansion([101, 5, 102], None) == [101, 5, 102]


def test_gradual_views_run_from_the_most_to_the_least_similar_part(tokenizer) -> None:
    groups = [Group(QUERY, [0, 1], [0])]
    batch = collator(tokenizer, "gradual")(groups)
    ids, mask = batch["passage_input_ids"], batch["passage_attention_mask"]
    assert ids.shape[:2] == (3, 2)  # parts x passages
    # passage 0's candidates without the real query, by ROUGE-L against it: one per part
    for part, view in enumerate(["open a file for reading now", "read a file", "socket options"]):
        assert row(ids[part, 0], mask[part, 0]) == expanded(tokenizer, TEXTS[0], view)
    # the negative's candidates are ranked against the same (this group's) query; its other two tie
    # at 0, so they fill parts 2 and 3 in a random order
    assert row(ids[0, 1], mask[0, 1]) == expanded(tokenizer, TEXTS[1], "open a file quickly")
    tied = {tuple(expanded(tokenizer, TEXTS[1], view)) for view in ["send data over a socket", "close the socket"]}
    assert {tuple(row(ids[part, 1], mask[part, 1])) for part in (1, 2)} == tied


def test_tied_candidates_fall_into_any_part(tokenizer) -> None:
    """Candidates that tie with the query are ordered at random, not by the expander (title first)."""
    texts = ["a socket is an endpoint for communication"]
    expansions = [["send data", "close it", "bind ports"]]  # no word in common with QUERY: all tie at 0
    first_part = set()
    for seed in range(20):
        collate = ExpansionCollator(tokenizer, texts, expansions, 16, 32, 8, "gradual", parts=3, seed=seed)
        batch = collate([Group(QUERY, [0], [0])])
        first_part.add(tuple(row(batch["passage_input_ids"][0, 0], batch["passage_attention_mask"][0, 0])))
    assert first_part == {tuple(expanded(tokenizer, texts[0], q)) for q in expansions[0]}


def test_the_real_query_is_never_a_training_expansion(tokenizer) -> None:
    groups = [Group(QUERY, [0, 1], [0])]
    forbidden = expanded(tokenizer, TEXTS[0], QUERY)
    for seed in range(20):
        make = ExpansionCollator(tokenizer, TEXTS, EXPANSIONS, 16, 32, 8, "random", training=True, seed=seed)
        batch = make(groups)
        assert row(batch["passage_input_ids"][0], batch["passage_attention_mask"][0]) != forbidden


def test_gold_none_and_evaluation_expansions(tokenizer) -> None:
    groups = [Group(QUERY, [0, 1], [0])]
    gold = collator(tokenizer, "gold")(groups)
    for i, text in enumerate(TEXTS):  # every passage of the group carries the group's query
        assert row(gold["passage_input_ids"][i], gold["passage_attention_mask"][i]) == expanded(tokenizer, text, QUERY)
    plain = collator(tokenizer, "none")(groups)
    reference = GroupCollator(tokenizer, TEXTS, 16, 32)(groups)
    assert all(torch.equal(plain[k], reference[k]) for k in reference)
    evaluation = collator(tokenizer, "gradual", training=False)(groups)
    for i, text in enumerate(TEXTS):  # each passage's first pseudo query, whatever the query
        first = expanded(tokenizer, text, EXPANSIONS[i][0])
        assert row(evaluation["passage_input_ids"][i], evaluation["passage_attention_mask"][i]) == first
