"""Two-tower pre-training, then fine-tuning, in one run of :class:`~keel.retrieval.biencoder.BiEncoderModule`.

Chang et al. (2020) pre-train the towers on the tasks' pairs and fine-tune them on a few labelled
pairs, both with the same objective: the softmax over in-batch documents,

    p(d | q) = exp(f(q, d)) / sum_{d' in batch} exp(f(q, d')),

maximising log p(d+ | q) (the paper's sampled softmax; keel's InfoNCE, with cross-device and false
negatives handled by :func:`keel.retrieval.nn.contrastive_loss`). The paper adds a correction term
for the sampled softmax's bias; with in-batch sampling every document's inclusion probability is
about the same, so it is left out, as DPR-style training does. Its towers are BERT-base with a
linear projection on [CLS]; here the architecture comes from the config (mean pooling, cosine
similarity over a temperature by default).

So the module is :class:`BiEncoderModule` with a plan: ``steps = {"pretrain": N, "finetune": M}``
(batches from :class:`~keel.retrieval.ict_bfs_wlp.PretrainFinetuneDataModule`, tagged with their
stage), a peak learning rate per stage (the paper: 1e-4 for pre-training, 5e-5 for fine-tuning),
each stage with its own linear warm-up and linear decay, and fresh optimizer moments when
fine-tuning starts, so fine-tuning begins the same way after pre-training as from scratch. The
"no pre-training" baseline is ``steps.pretrain = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from keel.core.distill.pipeline import clear_optimizer_state, staged_schedule
from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.ict_bfs_wlp.data import stage_plan
from keel.retrieval.nn.biencoder import BiEncoder

STAGE_KEY = "ict_bfs_wlp_stage"


class PretrainThenFinetune(BiEncoderModule):
    """A :class:`BiEncoderModule` that pre-trains on the tasks' pairs, then fine-tunes (one loop).

    Args:
        model: The bi-encoder (e.g. :func:`keel.retrieval.nn.biencoder_from_scratch`).
        optimizer: Factory taking the parameters; its learning rate is replaced by ``learning_rates``.
        steps: Optimizer steps per stage, ``{"pretrain": N, "finetune": M}``; must equal the data's.
        learning_rates: Peak learning rate per stage that runs.
        warmup_fraction: Share of each stage's steps spent warming its learning rate up.
        gather_across_devices: Score each query against every device's passages.
    """

    def __init__(
        self,
        model: BiEncoder,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        steps: Mapping[str, int],
        learning_rates: Mapping[str, float],
        warmup_fraction: float = 0.1,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__(model, optimizer, None, gather_across_devices)
        self.plan = stage_plan(steps)
        missing = [name for name, _ in self.plan if name not in learning_rates]
        if missing:
            raise ConfigError(f"learning_rates: no peak learning rate for stage(s) {missing}")
        if not 0 <= warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.learning_rates = {name: float(lr) for name, lr in learning_rates.items()}
        self.warmup_fraction = warmup_fraction
        self.entered: str | None = None  # the last stage started (saved in checkpoints)

    def configure_optimizers(self) -> Any:
        """The optimizer with a per-stage warm-up / linear-decay schedule, stepped every step."""
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        stages = [name for name, _ in self.plan]
        shapes = [
            staged_schedule(self.plan, stages, self.learning_rates, group["lr"], self.warmup_fraction)
            for group in optimizer.param_groups
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shapes)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def enter(self, stage: str) -> None:
        """Start a stage; fine-tuning after pre-training starts with fresh optimizer moments."""
        if stage == "finetune" and self.entered is not None:
            clear_optimizer_state(self.optimizers(use_pl_optimizer=False))  # also under ZeRO
        self.entered = stage

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The contrastive loss of the batch, entering its stage first when it is a new one."""
        stage = batch.get("stage", "finetune")
        if stage != self.entered:
            self.enter(stage)
        self.log("train/stage", float(stage == "finetune"), on_step=True, on_epoch=False, batch_size=1)
        return super().training_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the stage too, so a resumed run does not reset its optimizer again."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[STAGE_KEY] = self.entered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stage."""
        self.entered = checkpoint.get(STAGE_KEY)
