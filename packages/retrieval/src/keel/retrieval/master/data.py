"""MASTER's pre-training batches, and the DataModule that runs pre-training then fine-tuning in one plan.

The pre-training text is the retrieval corpus itself (every passage's ``title + text``, no query):
MASTER pre-trains on the passages it later retrieves from (MS MARCO's, in the paper). Each batch
holds, for every task that runs (masks as in :mod:`keel.retrieval.master.masking`, all token
labels -100 except at the masked positions, corruption 80/10/10):

======================  ===========================================================================
encoder pass / task     inputs
======================  ===========================================================================
``main`` encoder        the passage, uniform whole-word mask (``mlm_probability``, 30%)
``keywords``            the passage, keyword-weighted whole-word mask (``decoder_mlm_probability``)
``neighbour`` encoder   segment A, uniform mask
``neighbour``           segment B, keyword-weighted mask: recovered from A's [CLS]
``complementary`` enc.  the passage, uniform mask ``M`` (``complementary_probability``, 50%)
``complementary``       the passage masked at every word token *not* in ``M``: the decoder must
                        recover what only the encoder saw, through the [CLS]
generator tasks         the passage with a uniform mask (``generator_probability``) set to
                        ``[MASK]``, for the generator to fill (``corrupted`` / ``replaced``)
======================  ===========================================================================

Neighbouring passages (``neighbour``): ``half`` (the authors' code) makes A the first half of the
passage's words and B the rest; ``next`` makes A the passage and B the following passage of the same
document (consecutive corpus entries with the same title), falling back to the halves for the last
passage of a document.

Masks are drawn from a generator seeded by the data seed and the batch's item indices, so a batch
is the same whenever it is drawn again (a resumed run sees the masks of an uninterrupted one).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from keel.core.data.sampling import resumable_loader
from keel.core.distill.data import teacher_tokenizer
from keel.core.distill.pipeline import StagedLoader
from keel.core.errors import ConfigError
from keel.retrieval.data.beir import BeirData
from keel.retrieval.data.datamodule import RetrievalDataModule
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
from keel.retrieval.master.model import GENERATOR_TASKS, check_tasks, encoder_passes

STAGES = ("pretrain", "finetune")
NEIGHBOURS = ("half", "next")


def stage_plan(steps: Mapping[str, int]) -> list[tuple[str, int]]:
    """The stages that run (``pretrain``, ``finetune``), in order, with their step counts.

    Raises:
        ConfigError: On an unknown stage, a negative count, or no step at all.
    """
    unknown = set(steps) - set(STAGES)
    if unknown:
        raise ConfigError(f"steps: unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    if any(int(v) < 0 for v in steps.values()):
        raise ConfigError(f"steps: counts must be >= 0, got {dict(steps)}")
    plan = [(name, int(steps.get(name, 0))) for name in STAGES if int(steps.get(name, 0)) > 0]
    if not plan:
        raise ConfigError("steps: the plan needs pretrain or finetune steps > 0")
    return plan


def next_passages(data: BeirData) -> list[int]:
    """For each corpus passage (in file order), the index of the next passage of its document, else -1.

    A document is a run of consecutive passages with the same title (a page's sections and API
    entries, a man page's chunks, in reading order).
    """
    passages = list(data.corpus.values())
    return [
        i + 1 if i + 1 < len(passages) and passages[i + 1].title == p.title and p.title else -1
        for i, p in enumerate(passages)
    ]


class PretrainingTexts(Dataset):
    """The tokenized pre-training passages; an item is ``(index, text, next passage or None)``."""

    def __init__(self, texts: Sequence[TokenizedText], following: Sequence[int] | None = None) -> None:
        self.texts = list(texts)
        self.following = list(following) if following is not None else [-1] * len(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[int, TokenizedText, TokenizedText | None]:
        following = self.following[index]
        return index, self.texts[index], self.texts[following] if following >= 0 else None


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class PretrainingCollator:
    """Builds every task's inputs and labels for a list of :class:`PretrainingTexts` items.

    Keys, each ``[batch, length]``: for every encoder pass ``P`` the tasks need,
    ``P_encoder_input_ids``, ``P_encoder_attention_mask``, ``P_encoder_labels``; for every decoder task
    ``T`` among keywords / neighbour / complementary, ``T_input_ids``, ``T_attention_mask``,
    ``T_labels``; for the generator tasks, ``generator_input_ids``, ``generator_attention_mask``,
    ``generator_positions`` (bool, the masked positions), ``text_ids`` (the clean passage) and
    ``word_positions`` (bool, the tokens a replaced-token detector judges).

    Args:
        tasks: The tasks (see :data:`keel.retrieval.master.model.TASKS`).
        weights: Rarity weights of the keyword masks.
        corruption: How chosen tokens are replaced (mask id, vocabulary, 80/10/10).
        pad_id: Padding token id.
        mlm_probability: Share of word tokens the encoder passes mask.
        decoder_mlm_probability: Share the keyword-weighted decoder masks cover.
        complementary_probability: Share of the complementary task's encoder mask ``M``.
        generator_probability: Share of tokens the generator fills.
        neighbour: ``half`` or ``next`` (see the module docstring).
        seed: Seed of the masks.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weights: KeywordWeights,
        corruption: Corruption,
        pad_id: int = 0,
        mlm_probability: float = 0.3,
        decoder_mlm_probability: float = 0.5,
        complementary_probability: float = 0.5,
        generator_probability: float = 0.15,
        neighbour: str = "half",
        seed: int = 0,
    ) -> None:
        if neighbour not in NEIGHBOURS:
            raise ConfigError(f"neighbour must be one of {', '.join(NEIGHBOURS)}, got '{neighbour}'")
        for name, value in (
            ("mlm_probability", mlm_probability),
            ("decoder_mlm_probability", decoder_mlm_probability),
            ("complementary_probability", complementary_probability),
            ("generator_probability", generator_probability),
        ):
            if not 0 < value < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        self.tasks = check_tasks(tasks)
        self.passes = encoder_passes(self.tasks)
        self.weights = weights
        self.corruption = corruption
        self.pad_id = pad_id
        self.mlm_probability = mlm_probability
        self.decoder_mlm_probability = decoder_mlm_probability
        self.complementary_probability = complementary_probability
        self.generator_probability = generator_probability
        self.neighbour = neighbour
        self.seed = seed

    def neighbour_pair(
        self, text: TokenizedText, following: TokenizedText | None
    ) -> tuple[TokenizedText, TokenizedText]:
        """Segments A (encoded) and B (decoded) of the neighbouring-passage task."""
        if self.neighbour == "next" and following is not None:
            return text, following
        half = len(text.words) // 2
        return text.segment(0, half), text.segment(half, len(text.words))

    def __call__(self, items: list[tuple[int, TokenizedText, TokenizedText | None]]) -> dict[str, torch.Tensor]:
        """The padded tensors of one batch (see the class docstring)."""
        rng = random.Random(f"{self.seed}:" + ",".join(str(index) for index, _, _ in items))
        rows: dict[str, list[list[int]]] = {}

        def add(name: str, ids: list[int], labels: list[int] | None = None) -> None:
            rows.setdefault(f"{name}_input_ids", []).append(ids)
            if labels is not None:
                rows.setdefault(f"{name}_labels", []).append(labels)

        corrupt = self.corruption
        for _, text, following in items:
            if "main" in self.passes:
                add("main_encoder", *corrupt(text.ids, uniform_word_mask(text, self.mlm_probability, rng), rng))
            if "keywords" in self.tasks:
                masked = keyword_word_mask(text, self.decoder_mlm_probability, self.weights, rng)
                add("keywords", *corrupt(text.ids, masked, rng))
            if "neighbour" in self.tasks:
                first, second = self.neighbour_pair(text, following)
                add("neighbour_encoder", *corrupt(first.ids, uniform_word_mask(first, self.mlm_probability, rng), rng))
                masked = keyword_word_mask(second, self.decoder_mlm_probability, self.weights, rng)
                add("neighbour", *corrupt(second.ids, masked, rng))
            if "complementary" in self.tasks:
                encoder_mask, decoder_mask = complementary_masks(text, self.complementary_probability, rng)
                add("complementary_encoder", *corrupt(text.ids, encoder_mask, rng))
                add("complementary", *corrupt(text.ids, decoder_mask, rng))
            if any(t in GENERATOR_TASKS for t in self.tasks):
                chosen = set(uniform_word_mask(text, self.generator_probability, rng))
                ids = [corrupt.mask_id if p in chosen else t for p, t in enumerate(text.ids)]
                add("generator", ids)
                rows.setdefault("generator_positions", []).append([int(p in chosen) for p in range(len(ids))])
                rows.setdefault("text_ids", []).append(list(text.ids))
                words = set(text.word_positions)
                rows.setdefault("word_positions", []).append([int(p in words) for p in range(len(ids))])
        batch: dict[str, torch.Tensor] = {}
        for key, values in rows.items():
            if key.endswith("_labels"):
                batch[key] = _pad(values, IGNORE)
            elif key.endswith("_positions"):
                batch[key] = _pad(values, 0).bool()
            else:
                batch[key] = _pad(values, self.pad_id)
            if key.endswith("_input_ids"):
                batch[key.replace("_input_ids", "_attention_mask")] = _pad([[1] * len(v) for v in values], 0)
        return batch


class MasterDataModule(L.LightningDataModule):
    """Pre-training passages for the ``pretrain`` stage, then the retrieval pairs for ``finetune``.

    Training batches come stage after stage (:class:`~keel.core.distill.pipeline.StagedLoader`,
    ``batch["stage"]``); validation and test are the retrieval task's.

    Args:
        retrieval: The fine-tuning and evaluation data (its corpus is also the pre-training text).
        steps: The run's plan, ``{pretrain: N, finetune: M}`` (must equal the module's).
        tasks: The pre-training tasks (must equal the model's).
        max_length: Longest pre-training passage in tokens.
        batch_size: Pre-training passages per batch and device.
        mlm_probability: See :class:`PretrainingCollator`.
        decoder_mlm_probability: See :class:`PretrainingCollator`.
        complementary_probability: See :class:`PretrainingCollator`.
        generator_probability: See :class:`PretrainingCollator`.
        keyword_weighting: ``inverse_frequency`` (the authors') or ``idf`` (see
            :class:`~keel.retrieval.master.masking.KeywordWeights`).
        neighbour: ``half`` or ``next``.
        seed: Seed of the pre-training order and masks.
        num_workers: DataLoader workers for pre-training.
    """

    def __init__(
        self,
        retrieval: RetrievalDataModule,
        steps: Mapping[str, int],
        tasks: Sequence[str],
        max_length: int = 128,
        batch_size: int = 32,
        mlm_probability: float = 0.3,
        decoder_mlm_probability: float = 0.5,
        complementary_probability: float = 0.5,
        generator_probability: float = 0.15,
        keyword_weighting: str = "inverse_frequency",
        neighbour: str = "half",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.retrieval = retrieval
        self.plan = stage_plan(steps)
        self.tasks = check_tasks(tasks)
        pretrains = any(name == "pretrain" for name, _ in self.plan)
        if pretrains != bool(self.tasks):
            raise ConfigError("data: pre-training steps need tasks, and tasks need pre-training steps")
        self.max_length = max_length
        self.batch_size = batch_size
        self.probabilities = {
            "mlm_probability": mlm_probability,
            "decoder_mlm_probability": decoder_mlm_probability,
            "complementary_probability": complementary_probability,
            "generator_probability": generator_probability,
        }
        self.keyword_weighting = keyword_weighting
        self.neighbour = neighbour
        self.seed = seed
        self.num_workers = num_workers
        self.pretraining: PretrainingTexts | None = None
        self.collate: PretrainingCollator | None = None
        KeywordWeights({}, {}, 0, keyword_weighting)  # a bad weighting fails at build time, not after setup

    @property
    def data(self) -> BeirData | None:
        """The retrieval folder in memory (after setup)."""
        return self.retrieval.data

    def prepare_data(self) -> None:
        """Build the retrieval corpus when its DataModule is asked to."""
        self.retrieval.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Read the retrieval data; tokenize the corpus and count its words for pre-training."""
        self.retrieval.setup(stage)
        if not self.tasks or self.pretraining is not None:
            return
        data = self.retrieval.data
        assert data is not None
        tokenizer = teacher_tokenizer(self.retrieval.tokenizer)
        texts = tokenize(tokenizer, [p.full_text for p in data.corpus.values()], self.max_length)
        weights = KeywordWeights.from_texts(texts, self.keyword_weighting)
        self.pretraining = PretrainingTexts(texts, next_passages(data) if "neighbour" in self.tasks else None)
        specials = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        by_name = {content: i for i, content in specials.items()}
        mask_id = by_name.get("[MASK]", by_name.get("<mask>"))  # BERT's or RoBERTa's spelling
        if mask_id is None:
            raise ConfigError(f"{self.retrieval.tokenizer}: the tokenizer has no mask token to pre-train with")
        corruption = Corruption(mask_id, tokenizer.get_vocab_size(), frozenset(specials))
        pad_id = by_name.get("[PAD]", by_name.get("<pad>", 0))
        self.collate = PretrainingCollator(
            self.tasks, weights, corruption, pad_id, **self.probabilities, neighbour=self.neighbour, seed=self.seed
        )
        tokens = sum(len(t.ids) for t in texts)
        print(
            f"data: pre-training on {len(texts):,} passages ({tokens:,} tokens, at most {self.max_length} each), "
            f"tasks {', '.join(self.tasks)}; keyword weights: {self.keyword_weighting} over {weights.documents:,} "
            f"passages, {len(weights.document_frequency):,} distinct words",
            flush=True,
        )

    def pretraining_loader(self) -> DataLoader:
        """Shuffled pre-training batches, sharded over ranks and resumable mid-epoch."""
        self.setup()
        assert self.pretraining is not None
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        return resumable_loader(
            self.pretraining,
            self.batch_size,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> StagedLoader:
        """The plan's batches, stage after stage."""
        self.retrieval.trainer = self.trainer
        loaders: dict[str, Any] = {}
        for name, _ in self.plan:
            loaders[name] = self.pretraining_loader() if name == "pretrain" else self.retrieval.train_dataloader()
        return StagedLoader([(name, loaders[name], steps) for name, steps in self.plan])

    def val_dataloader(self) -> DataLoader:
        """The retrieval task's validation queries."""
        return self.retrieval.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The retrieval task's test queries."""
        return self.retrieval.test_dataloader()
