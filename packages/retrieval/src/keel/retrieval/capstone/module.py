"""CAPSTONE: a bi-encoder fine-tuned on passages expanded by a curriculum of pseudo queries, scored multi-view.

:class:`CapstoneModule` is :class:`~keel.retrieval.biencoder.BiEncoderModule` (same InfoNCE over
in-batch, cross-device and hard negatives, same metrics and checkpoints) with two additions:

* **the curriculum's step**: a ``gradual`` training batch carries one expanded copy of every passage
  per part (:class:`~keel.retrieval.capstone.data.ExpansionCollator`); the module trains on the part
  of its global step, :func:`~keel.retrieval.capstone.curriculum.curriculum_part`, over
  ``total_steps`` (logged as ``train/curriculum_part``);
* **multi-view scoring**: the judged pool of ``pool_split`` is ranked with every passage scored
  through its first ``views`` expansions (max over views by default, see
  :mod:`keel.retrieval.capstone.multiview`), before training (``zeroshot/pool_*``) and at the end of
  testing (``test/pool_*``). The plain arm (``curriculum: none``) ranks the passages alone, through
  the same code.
* **both inference modes at test**: since the plain arm is scored on passages alone and the others
  through their views, ``test/pool_*`` mixes what training did with how inference scores. Every arm
  therefore also logs both modes, ``test/alone_pool_*`` (each passage alone) and
  ``test/views_pool_*`` (each passage through its first ``views`` pseudo queries), so the plain
  model scored through views, or a curriculum model scored on passages alone, can be compared.

In-batch validation and test losses expand each passage with its first pseudo query only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.capstone.curriculum import check_curriculum, curriculum_part
from keel.retrieval.capstone.multiview import AGGREGATIONS, multi_view_pool_ranking
from keel.retrieval.nn.biencoder import BiEncoder
from keel.retrieval.nn.loss import ContrastiveOutput


class CapstoneModule(BiEncoderModule):
    """Curriculum training and multi-view evaluation of a bi-encoder (see the module docstring).

    Args:
        model: The bi-encoder.
        optimizer: Factory taking the trainable parameters.
        total_steps: The run's optimizer steps ``T`` (the curriculum spends ``T / parts`` on each part).
        curriculum: ``gradual``, ``random``, ``gold`` or ``none`` (must equal the data's).
        parts: Parts of the ``gradual`` curriculum (``N``; 3 in the paper).
        views: Expansions per passage at inference (``k``; 10 in the paper).
        aggregation: ``max`` over views (the paper's merge) or ``mean`` of the views' embeddings.
        pool_split: Rank this split's judged pool before training and after testing (``None``: do not).
        zero_shot: Also rank it before training.
        scheduler: Optional factory taking the optimizer, stepped every step.
        gather_across_devices: Score each query against every device's passages.
    """

    def __init__(
        self,
        model: BiEncoder,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        total_steps: int,
        curriculum: str = "gradual",
        parts: int = 3,
        views: int = 10,
        aggregation: str = "max",
        pool_split: str | None = "test",
        zero_shot: bool = True,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, gather_across_devices)
        check_curriculum(curriculum, parts)
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1 (the run's optimizer steps), got {total_steps}")
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got '{aggregation}'")
        if views < 1:
            raise ConfigError(f"views must be >= 1, got {views}")
        self.total_steps = total_steps
        self.curriculum = curriculum
        self.parts = parts
        self.views = views
        self.aggregation = aggregation
        self.pool_split = pool_split
        self.zero_shot = zero_shot

    def current_part(self) -> int:
        """The curriculum part of the current optimizer step (1 = the most query-like pseudo queries)."""
        return curriculum_part(self.global_step, self.total_steps, self.parts)

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> ContrastiveOutput:
        """The parent's loss, on the current part's expansions when the batch carries one per part."""
        if batch["passage_input_ids"].dim() == 3:
            index = self.current_part() - 1
            batch = {
                **batch,
                "passage_input_ids": batch["passage_input_ids"][index],
                "passage_attention_mask": batch["passage_attention_mask"][index],
            }
            if self.training:
                self.log("train/curriculum_part", float(index + 1), on_step=True, on_epoch=False, batch_size=1)
        return super().forward_loss(batch)

    def pool_metrics(self, expanded: bool | None = None) -> dict[str, float]:
        """Multi-view ranking metrics of ``pool_split``'s judged pool (see the module docstring).

        Args:
            expanded: Score each passage through its views (``True``) or alone (``False``); ``None``:
                as the arm infers (alone for ``curriculum: none``, else through its views).

        Raises:
            ConfigError: If the run has no :class:`~keel.retrieval.capstone.CapstoneDataModule`.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "expansions"):
            raise ConfigError("pool_split ranks the datamodule's pool; train with a CapstoneDataModule")
        datamodule.setup()
        if expanded is None:
            expanded = self.curriculum != "none"
        expansions = datamodule.expansions if expanded else {}
        return multi_view_pool_ranking(
            self.model,
            datamodule.data,
            str(self.pool_split),
            expansions,
            views=self.views,
            aggregation=self.aggregation,
            query_max_length=datamodule.query_max_length,
            passage_max_length=datamodule.passage_max_length,
            expansion_max_length=datamodule.expansion_max_length,
        )

    def _log_metrics(self, prefix: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.log(f"{prefix}{name}", value, on_step=False, on_epoch=True, batch_size=1)

    def _log_pool(self, prefix: str) -> None:
        self._log_metrics(f"{prefix}/", self.pool_metrics())

    def on_train_start(self) -> None:
        """Rank the pool with the model as training finds it (not again when a run resumes)."""
        if self.pool_split is not None and self.zero_shot and self.global_step == 0:
            self._log_pool("zeroshot")

    def on_test_epoch_end(self) -> None:
        """Rank the pool with the trained model: as the arm infers, then alone and through views."""
        if self.pool_split is None:
            return
        alone, views = self.pool_metrics(expanded=False), self.pool_metrics(expanded=True)
        self._log_metrics("test/", alone if self.curriculum == "none" else views)  # as the arm infers
        self._log_metrics("test/alone_", alone)
        self._log_metrics("test/views_", views)
