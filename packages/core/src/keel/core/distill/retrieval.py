"""Definition -> headword retrieval: the bi-encoder pieces, the metrics and the DataModule.

A bi-encoder embeds a text as the mean of its last hidden states over real tokens (the pooling
all-MiniLM-L6-v2 was trained with), L2-normalised. Fine-tuning minimises the in-batch-negative
InfoNCE loss of a definition against its headword:

    L = -1/B sum_i log( exp(s(q_i, d_i) / t) / sum_j exp(s(q_i, d_j) / t) ),   s = cosine similarity,

where the other headwords of the batch are the negatives (van den Oord et al., 2018; the
"multiple negatives ranking" loss of Sentence-BERT, whose scale of 20 is t = 0.05). A batch may hold two
senses of the same word; the copies of a query's own headword are not counted as negatives.

Evaluation ranks every headword of the split for every distinct definition of the split, and reports
MRR@10 and recall@1 / @10 (recall@k: a correct headword is among the top k; a definition shared by
synonyms has several correct headwords, and the best-ranked one counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from keel.core.data.sampling import resumable_loader
from keel.core.distill.data import DefinitionPair, DefinitionSplit, encode, pad, teacher_tokenizer, wordnet_split

METRICS = ("mrr@10", "recall@1", "recall@10")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``[batch, length, width]`` over the positions where ``attention_mask`` is 1."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings ``[batch, width]`` of a Hugging Face encoder."""
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


def info_nce(
    queries: torch.Tensor, documents: torch.Tensor, temperature: float, document_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """In-batch-negative InfoNCE of ``queries[i]`` against ``documents[i]`` (see the module docstring).

    Args:
        queries: ``[batch, width]`` embeddings (normalised for cosine similarity).
        documents: ``[batch, width]``; row ``i`` is the positive of query ``i``.
        temperature: The softmax temperature t.
        document_ids: ``[batch]`` ids of the documents; another row with the query's own id is not a
            negative (it is masked out of the denominator).
    """
    logits = queries @ documents.T / temperature
    if document_ids is not None:
        same = document_ids[:, None] == document_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits.float(), torch.arange(len(queries), device=queries.device))


def retrieval_metrics(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """MRR@10 and recall@k of ranking candidates by score.

    A query's rank is 1 + the number of wrong candidates scoring at least as high as its best correct
    one (ties count against the model, so a constant scorer gets the worst rank, not the best).

    Args:
        scores: ``[queries, candidates]`` similarities.
        relevant: ``[queries, candidates]`` booleans, at least one true per row.
        ks: The cut-offs of recall@k.

    Returns:
        ``{"mrr@10": ..., "recall@1": ..., "recall@10": ...}``.

    Raises:
        ValueError: If a query has no correct candidate.
    """
    relevant = relevant.bool()
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one relevant candidate")
    best = scores.masked_fill(~relevant, float("-inf")).max(1).values
    rank = 1 + ((scores >= best[:, None]) & ~relevant).sum(1)
    reciprocal = torch.where(rank <= 10, 1.0 / rank.double(), torch.zeros((), dtype=torch.float64))
    metrics = {"mrr@10": float(reciprocal.mean())}
    for k in ks:
        metrics[f"recall@{k}"] = float((rank <= k).double().mean())
    return metrics


@dataclass
class RetrievalSet:
    """One split as a ranking problem: distinct definitions (queries), distinct headwords (candidates)."""

    queries: list[str]
    candidates: list[str]
    pairs: list[tuple[int, int]]  # (query index, candidate index) of every correct pair

    @classmethod
    def from_pairs(cls, pairs: Sequence[DefinitionPair]) -> RetrievalSet:
        """Index a split's pairs."""
        queries = sorted({p.definition for p in pairs})
        candidates = sorted({p.headword for p in pairs})
        q_index = {q: i for i, q in enumerate(queries)}
        c_index = {c: i for i, c in enumerate(candidates)}
        return cls(queries, candidates, [(q_index[p.definition], c_index[p.headword]) for p in pairs])

    def relevance(self) -> torch.Tensor:
        """``[queries, candidates]`` booleans: which headwords a definition defines."""
        relevant = torch.zeros(len(self.queries), len(self.candidates), dtype=torch.bool)
        for q, c in self.pairs:
            relevant[q, c] = True
        return relevant


class PairDataset(Dataset):
    """Tokenized (definition, headword) pairs with their query and candidate indices."""

    def __init__(self, retrieval: RetrievalSet, query_ids: list[list[int]], candidate_ids: list[list[int]]) -> None:
        self.retrieval = retrieval
        self.query_ids = query_ids
        self.candidate_ids = candidate_ids

    def __len__(self) -> int:
        return len(self.retrieval.pairs)

    def __getitem__(self, index: int) -> tuple[list[int], list[int], int, int]:
        q, c = self.retrieval.pairs[index]
        return self.query_ids[q], self.candidate_ids[c], q, c


def collate_pairs(items: list[tuple[list[int], list[int], int, int]]) -> dict[str, torch.Tensor]:
    """Pad definitions and headwords separately; keep their indices (``query``, ``candidate``)."""
    query_ids, query_mask = pad([item[0] for item in items])
    doc_ids, doc_mask = pad([item[1] for item in items])
    return {
        "query_ids": query_ids,
        "query_mask": query_mask,
        "doc_ids": doc_ids,
        "doc_mask": doc_mask,
        "query": torch.tensor([item[2] for item in items]),
        "candidate": torch.tensor([item[3] for item in items]),
    }


class RetrievalEvaluator:
    """Collects query and candidate embeddings over evaluation batches, then scores the whole split."""

    def __init__(self, retrieval: RetrievalSet) -> None:
        self.retrieval = retrieval
        self.queries: dict[int, torch.Tensor] = {}
        self.candidates: dict[int, torch.Tensor] = {}

    def update(self, batch: dict[str, torch.Tensor], query_emb: torch.Tensor, doc_emb: torch.Tensor) -> None:
        """Record one batch's embeddings (a headword seen twice has the same embedding in eval mode)."""
        for index, emb in zip(batch["query"].tolist(), query_emb.detach().float().cpu(), strict=True):
            self.queries[index] = emb
        for index, emb in zip(batch["candidate"].tolist(), doc_emb.detach().float().cpu(), strict=True):
            self.candidates[index] = emb

    def compute(self) -> dict[str, float]:
        """The metrics over every query and every candidate of the split."""
        n_q, n_c = len(self.retrieval.queries), len(self.retrieval.candidates)
        if len(self.queries) != n_q or len(self.candidates) != n_c:
            raise RuntimeError(f"evaluation saw {len(self.queries)}/{n_q} queries, {len(self.candidates)}/{n_c} words")
        queries = torch.stack([self.queries[i] for i in range(n_q)])
        candidates = torch.stack([self.candidates[i] for i in range(n_c)])
        return retrieval_metrics(queries @ candidates.T, self.retrieval.relevance())


class DefinitionRetrievalDataModule(L.LightningDataModule):
    """WordNet definition -> headword pairs, tokenized with the teacher's WordPiece tokenizer.

    Training batches are shuffled pairs; validation and test batches go through every pair of the split
    in order and carry the indices a :class:`RetrievalEvaluator` needs.

    Args:
        teacher: The teacher's folder (or ``package:...``) whose ``tokenizer.json`` is used.
        split_seed: Seed of the headword split (fixed per experiment; not the run's seed).
        val_words: Headwords held out for validation.
        test_words: Headwords held out for the test; every one of them is a candidate for every test query.
        max_length: Longest definition in tokens.
        batch_size: Training pairs per batch (the in-batch negatives).
        eval_batch_size: Pairs per evaluation batch.
        seed: Seed of the training order.
        num_workers: DataLoader workers.
        wordnet_dir: Where WordNet's ``data.*`` files are.
    """

    def __init__(
        self,
        teacher: str,
        split_seed: int = 0,
        val_words: int = 500,
        test_words: int = 1000,
        max_length: int = 48,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        wordnet_dir: str = "/usr/share/wordnet",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.split_seed = split_seed
        self.val_words = val_words
        self.test_words = test_words
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.wordnet_dir = wordnet_dir
        self.datasets: dict[str, PairDataset] = {}

    def split(self) -> DefinitionSplit:
        """The task's pairs, split by headword."""
        return wordnet_split(self.split_seed, self.val_words, self.test_words, self.wordnet_dir)

    def setup(self, stage: str | None = None) -> None:
        """Split and tokenize the pairs of every split."""
        if self.datasets:
            return
        tokenizer = teacher_tokenizer(self.teacher)
        split = self.split()
        for name in ("train", "val", "test"):
            retrieval = RetrievalSet.from_pairs(getattr(split, name))
            self.datasets[name] = PairDataset(
                retrieval,
                encode(tokenizer, retrieval.queries, self.max_length),
                encode(tokenizer, retrieval.candidates, self.max_length),
            )

    def dataset(self, name: str) -> PairDataset:
        """The tokenized pairs of split ``name`` (``train``, ``val``, ``test``)."""
        self.setup()
        return self.datasets[name]

    def train_dataloader(self) -> DataLoader:
        """Shuffled training pairs, resumable mid-epoch."""
        return resumable_loader(
            self.dataset("train"),
            self.batch_size,
            seed=self.seed,
            collate_fn=collate_pairs,
            num_workers=self.num_workers,
        )

    def eval_dataloader(self, name: str) -> DataLoader:
        """Every pair of split ``name``, shortest definitions first.

        The metrics do not depend on the order (embeddings are collected by index), and batching
        definitions of similar length wastes little compute on padding.
        """
        dataset = self.dataset(name)
        lengths = [len(dataset.query_ids[q]) for q, _ in dataset.retrieval.pairs]
        order = sorted(range(len(dataset)), key=lambda i: lengths[i])
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=order,
            collate_fn=collate_pairs,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation pairs."""
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """The test pairs."""
        return self.eval_dataloader("test")
