"""The LightningModule that trains a bi-encoder with InfoNCE over in-batch and hard negatives.

Batches come from :class:`keel.retrieval.data.RetrievalDataModule` (see
:func:`keel.retrieval.data.collate_groups` for the keys). Under data parallelism each query is
scored against the passages of every device, gathered with gradients
(``self.all_gather(..., sync_grads=True)``), hard negatives included; see
:mod:`keel.retrieval.nn.loss` for the loss and why its gradient equals the single-process one.

Logged per stage (``train/``, ``val/``, ``test/``): ``loss``, ``mrr@10`` and ``accuracy`` over the
candidates of the batch (all devices' passages). These in-batch numbers track training; the
full-corpus metrics come from ``keel retrieval evaluate`` (:mod:`keel.retrieval.eval`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from keel.retrieval.nn.biencoder import BiEncoder
from keel.retrieval.nn.loss import ContrastiveOutput, contrastive_loss, reciprocal_ranks

STAGES = ("train", "val", "test")
CHECKPOINT_KEY = "keel_biencoder"


def _stage_metrics() -> nn.ModuleDict:
    return nn.ModuleDict({"loss": MeanMetric(), "mrr@10": MeanMetric(), "accuracy": MeanMetric()})


class BiEncoderModule(L.LightningModule):
    """Contrastive training of a :class:`~keel.retrieval.nn.BiEncoder`.

    Args:
        model: The bi-encoder (built, e.g. by :func:`keel.retrieval.nn.biencoder_from_pretrained`).
        optimizer: Factory taking the trainable parameters (``_partial_: true`` in a config).
        scheduler: Optional factory taking the optimizer, stepped every optimizer step.
        gather_across_devices: Score each query against the passages of every device (more
            negatives per query); ``False`` keeps the negatives local.
    """

    #: Constructor arguments kept out of the saved hyperparameters (modules and factories); a
    #: subclass with more of them extends it.
    hparams_ignore: tuple[str, ...] = ("model", "optimizer", "scheduler")

    def __init__(
        self,
        model: BiEncoder,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gather_across_devices = gather_across_devices
        # ModuleDict keys cannot be "train" (a Module method), hence the suffix
        self.stage_metrics = nn.ModuleDict({f"{stage}_metrics": _stage_metrics() for stage in STAGES})

    def _gather(self, tensor: torch.Tensor, sync_grads: bool) -> torch.Tensor:
        gathered = self.all_gather(tensor, sync_grads=sync_grads and torch.is_grad_enabled())
        if self.trainer.world_size == 1:  # a single-device strategy returns the tensor unchanged
            return gathered
        return gathered.reshape(-1, *tensor.shape[1:])

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> ContrastiveOutput:
        """Encode one batch and compute the contrastive loss over all devices' candidates."""
        queries = self.model.encode_queries(batch["query_input_ids"], batch["query_attention_mask"])
        passages = self.model.encode_passages(batch["passage_input_ids"], batch["passage_attention_mask"])
        distributed = self.gather_across_devices and self._trainer is not None and self.trainer.world_size > 1
        return contrastive_loss(
            queries,
            passages,
            batch["passage_ids"],
            batch["relevant_ids"],
            self.model.temperature,
            gather=self._gather if distributed else None,
            rank=self.global_rank if distributed else 0,
        )

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The loss of one batch, with the stage's metrics updated and logged."""
        out = self.forward_loss(batch)
        rr = reciprocal_ranks(out.logits.detach(), out.labels)
        metrics = self.stage_metrics[f"{stage}_metrics"]
        metrics["loss"].update(out.loss.detach())
        metrics["mrr@10"].update(rr)
        metrics["accuracy"].update((rr == 1).double())
        size = out.labels.numel()
        on_step = stage == "train"
        if on_step:
            self.log("train/loss_step", out.loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
            self.log("train/temperature", self.model.temperature.detach(), on_step=True, on_epoch=False)
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=size)
        return out.loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one training batch."""
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss and in-batch MRR@10 of one validation batch."""
        return self.step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss and in-batch MRR@10 of one test batch."""
        return self.step(batch, "test")

    def on_fit_start(self) -> None:
        """Reset every stage's metrics outside inference mode.

        A ``trainer.validate`` before ``fit`` leaves the metric states as inference tensors, which
        training and fit-time validation (run without inference mode) cannot update in place.
        """
        for metrics in self.stage_metrics.values():
            for metric in metrics.values():
                metric.reset()

    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters, and the scheduler if any."""
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the bi-encoder's architecture and tokenizer, so the checkpoint alone rebuilds it."""
        checkpoint[CHECKPOINT_KEY] = self.model.spec()


def load_biencoder(path: str) -> BiEncoder:
    """The bi-encoder of a :class:`BiEncoderModule` checkpoint, loaded with ``weights_only=True``.

    Args:
        path: A Lightning ``.ckpt`` written while training a :class:`BiEncoderModule`.

    Raises:
        CheckpointError: If the file is missing, unreadable or not a bi-encoder checkpoint.
    """
    from keel.core.errors import CheckpointError

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as err:  # a truncated file, or one that needs unsafe unpickling
        raise CheckpointError(f"{path}: cannot load with weights_only=True ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a BiEncoderModule checkpoint (no '{CHECKPOINT_KEY}' entry)")
    model = BiEncoder.from_spec(checkpoint[CHECKPOINT_KEY])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({str(err)[:200]})") from err
    return model.eval()
