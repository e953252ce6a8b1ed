"""The contrastive (InfoNCE) loss of a bi-encoder over in-batch, cross-device and hard negatives.

A batch holds ``B`` queries and ``B * G`` passages in groups of ``G``: group ``i`` is query ``i``'s
positive followed by its ``G - 1`` hard negatives. Every query is scored against every passage of
the batch, and, across ``W`` devices, against every passage of every device:

    L = -1/B sum_i log( exp(s(q_i, p_i+) / t) / sum_{j in C_i} exp(s(q_i, p_j) / t) ),

where ``C_i`` is the set of all ``W * B * G`` candidates minus the *false negatives* of query ``i``:
any candidate whose passage id is one of the query's relevant ids, other than the positive's own
column (a duplicate of the positive sitting in another group, or another passage relevant to the
same query, is not a negative).

Across devices the candidates are gathered **with** gradients and the queries stay local (the
pattern of sentence-transformers' ``gather_across_devices``). Gathering keeps each device's block in
rank order, so the positive of local query ``i`` on rank ``r`` sits in column
``r * B * G + i * G``. Each rank's loss is the mean over its own queries; data-parallel training
averages the ranks' gradients, and since the backward of the gather sums every rank's gradient into
the passages a rank encoded, the result is exactly the gradient of the mean loss over the global
batch (checked against a single process in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: ``gather(tensor, sync_grads)`` returns the concatenation over ranks, in rank order, of every
#: rank's ``tensor`` along dim 0 (the tensor itself in a single process).
Gather = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class ContrastiveOutput:
    """The loss and what the metrics need.

    Attributes:
        loss: The mean InfoNCE loss of the local queries.
        logits: ``[B, candidates]`` scores divided by the temperature, false negatives at ``-inf``.
        labels: ``[B]`` the column of each query's positive.
        false_negatives: ``[B, candidates]`` the masked cells.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    false_negatives: torch.Tensor


def false_negative_mask(candidate_ids: torch.Tensor, relevant_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cells ``[query, candidate]`` whose candidate is relevant to the query but is not its label column.

    Args:
        candidate_ids: ``[C]`` passage ids of the candidates (>= 0).
        relevant_ids: ``[B]`` or ``[B, R]`` ids relevant to each query, padded with -1.
        labels: ``[B]`` the positive's column for each query.
    """
    if relevant_ids.dim() == 1:
        relevant_ids = relevant_ids[:, None]
    same = (candidate_ids[None, :, None] == relevant_ids[:, None, :]) & (relevant_ids[:, None, :] >= 0)
    mask = same.any(-1)
    mask[torch.arange(len(labels), device=labels.device), labels] = False
    return mask


def contrastive_loss(
    queries: torch.Tensor,
    passages: torch.Tensor,
    passage_ids: torch.Tensor,
    relevant_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    gather: Gather | None = None,
    rank: int = 0,
) -> ContrastiveOutput:
    """InfoNCE of each query against all (gathered) passages, with false negatives masked.

    Args:
        queries: ``[B, d]`` query embeddings of this device.
        passages: ``[B * G, d]`` passage embeddings of this device, grouped per query with the
            positive first.
        passage_ids: ``[B * G]`` ids of those passages (equal ids = the same text).
        relevant_ids: ``[B]`` or ``[B, R]`` ids relevant to each query, padded with -1; column 0 is
            the positive of its group.
        temperature: The softmax temperature t.
        gather: Gathers a tensor from every device (see :data:`Gather`); ``None`` uses only the
            local passages.
        rank: This device's rank (the offset of its block among the gathered candidates).

    Raises:
        ValueError: If the passages do not form ``B`` equal groups.
    """
    batch = queries.shape[0]
    if batch == 0 or passages.shape[0] % batch:
        raise ValueError(f"{passages.shape[0]} passages do not form groups for {batch} queries")
    group = passages.shape[0] // batch
    if gather is not None:
        candidates = gather(passages, True)
        candidate_ids = gather(passage_ids, False)
    else:
        candidates, candidate_ids, rank = passages, passage_ids, 0
    labels = rank * passages.shape[0] + torch.arange(batch, device=queries.device) * group
    logits = queries @ candidates.T / temperature
    mask = false_negative_mask(candidate_ids, relevant_ids, labels)
    logits = logits.masked_fill(mask, float("-inf"))
    loss = F.cross_entropy(logits.float(), labels)
    return ContrastiveOutput(loss, logits, labels, mask)


def reciprocal_ranks(logits: torch.Tensor, labels: torch.Tensor, k: int = 10) -> torch.Tensor:
    """``[B]`` reciprocal rank of each query's label column among its candidates, 0 beyond rank ``k``.

    A wrong candidate scoring exactly as high as the positive counts as ranked above it, so a
    constant scorer gets the worst rank, not the best. Masked (``-inf``) cells never rank above.
    """
    positive = logits.gather(1, labels[:, None])
    above = logits >= positive
    above[torch.arange(len(labels), device=labels.device), labels] = False
    rank = 1 + above.sum(1)
    return torch.where(rank <= k, 1.0 / rank.double(), torch.zeros((), dtype=torch.float64))
