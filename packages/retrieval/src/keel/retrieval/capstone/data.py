"""Bi-encoder batches whose passages are expanded with pseudo queries, by CAPSTONE's curriculum.

An expanded passage is the passage's tokens followed by one pseudo query's:
``[CLS] title text [SEP] query [SEP]``. The authors join ``title [SEP] text [SEP] query``; keel keeps
title and text joined by a space, as every keel encoder reads a BEIR passage. The passage is cut to
``passage_max_length`` tokens and the query to ``expansion_max_length`` *before* they are joined, so a
long passage never pushes its expansion out of the input (the authors cut the joined string).

Training batches (``curriculum``, see :mod:`keel.retrieval.capstone.curriculum`):

* ``gradual``: for every passage of every group (positive and negatives) one candidate is drawn from
  each of the ``parts`` parts of its pseudo queries ranked against *that group's* query, and
  ``passage_input_ids`` / ``passage_attention_mask`` are ``[parts, B * G, L]``, part 1 first; the
  module picks the part of the current step, so the schedule follows the optimizer step exactly
  (also with worker processes and on resume);
* ``random``: one candidate drawn uniformly; ``gold``: the group's own query; ``none``: no expansion.

Validation and test batches expand each passage with its first pseudo query (the first view used
at inference, see :mod:`keel.retrieval.capstone.multiview`), or not at all with ``none``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from keel.core.distill.data import encode, pad
from keel.retrieval.capstone.curriculum import check_curriculum, curriculum_views, rank_by_similarity
from keel.retrieval.capstone.expansion import PassageQueries, QueryExpander
from keel.retrieval.data.datamodule import Group, GroupCollator, RetrievalDataModule, text_table


def join_expansion(passage_ids: Sequence[int], query_ids: Sequence[int] | None) -> list[int]:
    """``[CLS] p [SEP]`` followed by a query's tokens without its own first token: ``[CLS] p [SEP] q [SEP]``."""
    return list(passage_ids) if query_ids is None else [*passage_ids, *query_ids[1:]]


class ExpansionCollator(GroupCollator):
    """:class:`~keel.retrieval.data.GroupCollator` with each passage expanded (see the module docstring).

    Args:
        tokenizer: A ``tokenizers.Tokenizer``.
        texts: The deduplicated passage texts.
        expansions: The pseudo queries of each text, by text index.
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens, before its expansion.
        expansion_max_length: Longest expansion in tokens.
        curriculum: ``gradual``, ``random``, ``gold`` or ``none``.
        parts: Parts of the ``gradual`` curriculum.
        training: Draw expansions by the curriculum (else: each passage's first pseudo query).
        seed: Seed of the draws (combined with the batch's content, so a batch is the same when redrawn).
    """

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        expansions: Sequence[Sequence[str]],
        query_max_length: int,
        passage_max_length: int,
        expansion_max_length: int = 32,
        curriculum: str = "gradual",
        parts: int = 3,
        training: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, texts, query_max_length, passage_max_length)
        check_curriculum(curriculum, parts)
        self.expansions = expansions
        self.expansion_max_length = expansion_max_length
        self.curriculum = curriculum
        self.parts = parts
        self.training = training
        self.seed = seed

    def views(self, group: Group, text: int, rng: random.Random) -> list[str | None]:
        """The expansions of passage ``text`` in ``group``: one per view (``None``: the passage alone)."""
        candidates = self.expansions[text]
        if not self.training:
            return [candidates[0] if candidates else None]
        if self.curriculum == "gold":
            return [group.query]
        ranked = rank_by_similarity(candidates, group.query, rng)  # also drops a copy of the real query
        if self.curriculum == "gradual":
            return curriculum_views(ranked, self.parts, rng)
        return [rng.choice(ranked) if ranked else None]

    def __call__(self, groups: list[Group]) -> dict[str, torch.Tensor]:
        """The batch of :class:`GroupCollator`, its passages replaced by their expanded views."""
        batch = super().__call__(groups)
        if self.curriculum == "none":
            return batch
        rng = random.Random(f"{self.seed}:" + "|".join(f"{g.query}:{g.passages}" for g in groups))
        texts = [(g, t) for g in groups for t in g.passages]
        views = [self.views(g, t, rng) for g, t in texts]
        passages = encode(self.tokenizer, [self.texts[t] for _, t in texts], self.passage_max_length)
        wanted = sorted({v for row in views for v in row if v is not None})
        query_ids = dict(zip(wanted, encode(self.tokenizer, wanted, self.expansion_max_length), strict=True))
        stacks = []
        for view in range(len(views[0])):
            rows = [
                join_expansion(p, None if v[view] is None else query_ids[v[view]])
                for p, v in zip(passages, views, strict=True)
            ]
            stacks.append(pad(rows))
        width = max(ids.shape[1] for ids, _ in stacks)
        ids = torch.stack([torch.nn.functional.pad(i, (0, width - i.shape[1])) for i, _ in stacks])
        mask = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in stacks])
        if self.curriculum != "gradual" or not self.training:
            ids, mask = ids[0], mask[0]
        batch["passage_input_ids"], batch["passage_attention_mask"] = ids, mask
        return batch


class CapstoneDataModule(RetrievalDataModule):
    """:class:`~keel.retrieval.data.RetrievalDataModule` whose passages carry pseudo queries.

    Args:
        expander: Makes each passage's pseudo queries (default: :class:`PassageQueries`).
        curriculum: ``gradual``, ``random``, ``gold`` or ``none`` (must equal the module's).
        parts: Parts of the ``gradual`` curriculum (must equal the module's).
        expansion_max_length: Longest pseudo query in tokens.
        **kwargs: The arguments of :class:`~keel.retrieval.data.RetrievalDataModule`.
    """

    def __init__(
        self,
        expander: QueryExpander | None = None,
        curriculum: str = "gradual",
        parts: int = 3,
        expansion_max_length: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_curriculum(curriculum, parts)
        self.expander = expander if expander is not None else PassageQueries()
        self.curriculum = curriculum
        self.parts = parts
        self.expansion_max_length = expansion_max_length
        self.expansions: dict[str, list[str]] = {}
        self.train_collate: ExpansionCollator | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the folder (see the parent), then make every passage's pseudo queries and the collators."""
        if self.data is not None:
            return
        super().setup(stage)
        data, plain = self.data, self.collate
        assert data is not None
        assert plain is not None
        texts, text_ids = text_table(data)
        first: dict[int, Any] = {}
        for pid, index in text_ids.items():
            first.setdefault(index, data.corpus[pid])
        # the plain arm (``none``) trains without them, but is also scored through views at test
        by_text = self.expander([first[i] for i in range(len(texts))])
        self.expansions = {pid: list(by_text[index]) for pid, index in text_ids.items()}
        settings = dict(
            query_max_length=self.query_max_length,
            passage_max_length=self.passage_max_length,
            expansion_max_length=self.expansion_max_length,
            curriculum=self.curriculum,
            parts=self.parts,
            seed=self.seed,
        )
        self.collate = ExpansionCollator(plain.tokenizer, texts, by_text, training=False, **settings)
        self.train_collate = ExpansionCollator(plain.tokenizer, texts, by_text, training=True, **settings)
        counts = [len(q) for q in by_text]
        print(
            f"data: pseudo queries for {sum(c > 0 for c in counts):,} of {len(counts):,} distinct passages "
            f"({sum(counts) / max(len(counts), 1):.1f} per passage); curriculum {self.curriculum}",
            flush=True,
        )

    def training_collate(self) -> ExpansionCollator | None:
        """Training groups get the curriculum's expansions; evaluation keeps the first view."""
        return self.train_collate
