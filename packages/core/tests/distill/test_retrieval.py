"""Retrieval metrics on hand-computed rankings, InfoNCE against its formula, pooling, the evaluator."""

from __future__ import annotations

import math

import pytest
import torch

from keel.core.distill.data import DefinitionPair
from keel.core.distill.retrieval import (
    PairDataset,
    RetrievalEvaluator,
    RetrievalSet,
    collate_pairs,
    info_nce,
    mean_pool,
    retrieval_metrics,
)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_metrics_on_a_hand_ranked_case() -> None:
    # 3 queries, 12 candidates; query 0's answer ranks 1st, query 1's 3rd, query 2's 11th
    scores = torch.zeros(3, 12)
    relevant = torch.zeros(3, 12, dtype=torch.bool)
    scores[0] = torch.linspace(1.0, 0.0, 12)  # candidate 0 is best
    relevant[0, 0] = True
    scores[1] = torch.linspace(1.0, 0.0, 12)
    relevant[1, 2] = True  # two candidates above it
    scores[2] = torch.linspace(1.0, 0.0, 12)
    relevant[2, 10] = True  # ten above it: outside the top 10
    metrics = retrieval_metrics(scores, relevant)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)


def test_metrics_change_when_the_ranking_is_wrong() -> None:
    relevant = torch.eye(4, dtype=torch.bool)
    right = torch.eye(4) + 0.01 * torch.arange(4.0)  # the diagonal wins every row
    assert retrieval_metrics(right, relevant) == {"mrr@10": 1.0, "recall@1": 1.0, "recall@10": 1.0}
    reversed_rows = right.flip(1)  # every answer now ranks by its reversed position
    wrong = retrieval_metrics(reversed_rows, relevant)
    assert wrong["recall@1"] < 1.0
    assert wrong["mrr@10"] < 1.0


def test_ties_count_against_the_model_and_several_answers_take_the_best_one() -> None:
    constant = torch.zeros(2, 5)
    relevant = torch.zeros(2, 5, dtype=torch.bool)
    relevant[0, 0] = relevant[1, 4] = True
    assert retrieval_metrics(constant, relevant) == {"mrr@10": pytest.approx(1 / 5), "recall@1": 0.0, "recall@10": 1.0}
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    synonyms = torch.tensor([[False, False, True, False, True]])  # best correct one is 3rd
    assert retrieval_metrics(scores, synonyms)["mrr@10"] == pytest.approx(1 / 3)


def test_a_query_without_an_answer_is_rejected() -> None:
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


def test_info_nce_equals_the_direct_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    t = 0.05
    expected = 0.0
    for i in range(4):
        numerator = math.exp(float(queries[i] @ documents[i]) / t)
        denominator = sum(math.exp(float(queries[i] @ documents[j]) / t) for j in range(4))
        expected -= math.log(numerator / denominator) / 4
    assert float(info_nce(queries, documents, t)) == pytest.approx(expected, rel=1e-5)


def test_info_nce_does_not_count_a_copy_of_the_positive_as_a_negative() -> None:
    generator = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    documents[2] = documents[0]  # two senses of one headword in the batch
    ids = torch.tensor([7, 5, 7])
    t = 0.1
    expected = 0.0
    for i in range(3):
        negatives = [j for j in range(3) if j == i or ids[j] != ids[i]]
        logits = [float(queries[i] @ documents[j]) / t for j in negatives]
        expected -= (float(queries[i] @ documents[i]) / t - math.log(sum(math.exp(v) for v in logits))) / 3
    assert float(info_nce(queries, documents, t, ids)) == pytest.approx(expected, rel=1e-5)
    assert float(info_nce(queries, documents, t)) != pytest.approx(expected, rel=1e-3)


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_evaluator_scores_a_split_through_its_pairs() -> None:
    pairs = [
        DefinitionPair("a small dog", "puppy"),
        DefinitionPair("a young dog", "puppy"),
        DefinitionPair("a large cat", "tiger"),
        DefinitionPair("a large cat", "lion"),  # synonyms share a definition
    ]
    retrieval = RetrievalSet.from_pairs(pairs)
    assert retrieval.queries == ["a large cat", "a small dog", "a young dog"]
    assert retrieval.candidates == ["lion", "puppy", "tiger"]
    dataset = PairDataset(retrieval, [[1, 2], [1, 3], [1, 4]], [[5], [6], [7]])
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    evaluator = RetrievalEvaluator(retrieval)
    # embeddings that make every query point at "puppy": right for two queries, wrong for the cats
    puppy = torch.tensor([0.0, 1.0])
    queries = puppy.expand(len(dataset), 2)
    documents = torch.stack(
        [torch.tensor([0.0, 1.0]) if c == 1 else torch.tensor([1.0, 0.0]) for c in batch["candidate"]]
    )
    evaluator.update(batch, queries, documents)
    metrics = evaluator.compute()
    # the cat definition: puppy ranks first, its two answers tie behind it -> the best answer ranks 2nd
    assert metrics["recall@1"] == pytest.approx(2 / 3)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 1 + 1) / 3)
