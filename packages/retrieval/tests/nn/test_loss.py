"""The contrastive loss against hand computations: hard negatives, false-negative masking, rank offsets."""

from __future__ import annotations

import math

import pytest
import torch

from keel.core.distill.retrieval import info_nce
from keel.retrieval.nn import contrastive_loss, false_negative_mask, reciprocal_ranks

# two queries, groups of (positive, hard negative); query 1's hard negative (id 5) is a copy of
# query 0's positive (id 5): for query 0 it is a false negative, for query 1 a true negative
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
IDS = torch.tensor([5, 7, 9, 5])
RELEVANT = torch.tensor([5, 9])
T = 0.5


def test_duplicate_of_the_positive_is_masked_exactly_as_by_hand() -> None:
    out = contrastive_loss(Q, P, IDS, RELEVANT, T)
    # logits: q0 -> [2, 1.2, 0, 2 (masked)], q1 -> [0, 1.6, 2, 0]
    q0 = -2 + math.log(math.exp(2) + math.exp(1.2) + math.exp(0))
    q1 = -2 + math.log(1 + math.exp(1.6) + math.exp(2) + 1)
    assert out.loss.item() == pytest.approx((q0 + q1) / 2, rel=1e-6)
    assert out.labels.tolist() == [0, 2]
    assert out.false_negatives.tolist() == [[False, False, False, True], [False, False, False, False]]


def test_without_the_mask_the_duplicate_counts_as_a_negative() -> None:
    distinct = torch.tensor([5, 7, 9, 6])  # the same passages, but the copy has its own id
    masked = contrastive_loss(Q, P, IDS, RELEVANT, T).loss.item()
    unmasked = contrastive_loss(Q, P, distinct, RELEVANT, T).loss.item()
    q0_masked = math.log(math.exp(2) + math.exp(1.2) + 1)
    q0_unmasked = math.log(2 * math.exp(2) + math.exp(1.2) + 1)
    assert unmasked - masked == pytest.approx((q0_unmasked - q0_masked) / 2, rel=1e-6)


def test_other_relevant_passages_of_a_query_are_not_negatives() -> None:
    # query 0 is also relevant to passage 7 (its own hard negative by mistake) and passage 9
    relevant = torch.tensor([[5, 7, 9], [9, -1, -1]])
    out = contrastive_loss(Q, P, IDS, relevant, T)
    q0 = -2 + math.log(math.exp(2))  # only the positive is left in query 0's denominator
    q1 = -2 + math.log(1 + math.exp(1.6) + math.exp(2) + 1)
    assert out.loss.item() == pytest.approx((q0 + q1) / 2, rel=1e-6)


def test_matches_keel_core_info_nce_without_hard_negatives() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    ids = torch.tensor([0, 1, 2, 1, 3, 4])  # rows 1 and 3 are the same document
    expected = info_nce(queries, documents, 0.05, ids)
    torch.testing.assert_close(contrastive_loss(queries, documents, ids, ids, 0.05).loss, expected)


def test_rank_offset_and_gathered_gradients_reproduce_the_global_batch() -> None:
    """Two simulated ranks with a gather that concatenates both blocks, like all_gather with grads."""
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(4, 8, generator=generator, requires_grad=True)
    passages = torch.randn(12, 8, generator=generator, requires_grad=True)  # 4 groups of 3
    ids = torch.arange(12)
    ids[10] = 0  # query 3's last hard negative duplicates query 0's positive
    relevant = ids[::3].clone()
    full = contrastive_loss(queries, passages, ids, relevant, 0.1)
    (full_q, full_p) = torch.autograd.grad(full.loss, (queries, passages))

    total = 0
    for rank in range(2):
        local_q, local_p = queries[2 * rank : 2 * rank + 2], passages[6 * rank : 6 * rank + 6]
        local_ids = ids[6 * rank : 6 * rank + 6]
        blocks = {"p": [passages[:6], passages[6:]], "i": [ids[:6], ids[6:]]}

        def gather(tensor: torch.Tensor, grads: bool, blocks=blocks, local_p=local_p) -> torch.Tensor:
            return torch.cat(blocks["p"] if tensor is local_p else blocks["i"])

        out = contrastive_loss(local_q, local_p, local_ids, relevant[2 * rank : 2 * rank + 2], 0.1, gather, rank)
        assert out.labels.tolist() == [6 * rank, 6 * rank + 3]
        total = total + out.loss / 2  # data parallelism averages the ranks
    grads = torch.autograd.grad(total, (queries, passages))
    torch.testing.assert_close(total, full.loss)
    torch.testing.assert_close(grads[0], full_q)
    torch.testing.assert_close(grads[1], full_p)


def test_groups_must_divide_the_passages() -> None:
    with pytest.raises(ValueError, match="groups"):
        contrastive_loss(Q, P[:3], IDS[:3], RELEVANT, T)


def test_false_negative_mask_ignores_padding() -> None:
    mask = false_negative_mask(torch.tensor([3, -1, 4]), torch.tensor([[3, -1], [4, -1]]), torch.tensor([0, 2]))
    assert mask.tolist() == [[False, False, False], [False, False, False]]


def test_reciprocal_ranks_by_hand() -> None:
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0],  # positive (column 0) is first: 1
            [3.0, 1.0, 2.0],  # column 1 is third: 1/3
            [1.0, 1.0, float("-inf")],  # a tie counts against the positive: 1/2
        ]
    )
    labels = torch.tensor([0, 1, 0])
    assert reciprocal_ranks(logits, labels).tolist() == pytest.approx([1.0, 1 / 3, 0.5])
    assert reciprocal_ranks(logits, labels, k=2).tolist() == pytest.approx([1.0, 0.0, 0.5])
