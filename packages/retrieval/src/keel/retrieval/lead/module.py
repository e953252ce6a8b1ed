"""LEAD as a :class:`~keel.retrieval.biencoder.BiEncoderModule`: the student's loss plus distillation terms.

The training loss of a batch is (see :mod:`keel.retrieval.lead.model` for the terms)

    L = c * L_student + f * L_final + l * L_layer,

where ``L_student`` is the student's own InfoNCE over in-batch, cross-device and hard negatives
(:func:`keel.retrieval.nn.contrastive_loss`), ``L_final`` the KL from the teacher's output score
distribution to the student's, and ``L_layer`` LEAD's weighted layer-wise KL over K sampled,
sorted layer pairs; ``c, f, l`` are ``loss_weights`` (all 1 in the official scripts). Every term
uses the same candidates (the passages of every device) and the same false-negative mask.

With ``train_teacher`` the teacher trains jointly, as the official DE -> DE script does
(``--train_de``; ``LEAD/util.py:distill_loss``), and the loss gains its terms:

    L = c * L_student + c * L_teacher + f * (L_final + L_final_reverse) + l * L_layer,

where ``L_teacher`` is the teacher's own InfoNCE and ``L_final_reverse = KL(softmax(s^S / T) ||
softmax(s^T))`` pulls the teacher toward the student. As in the official code nothing is detached:
the teacher's scores, targets of the forward KL and of the layer term, also carry gradient (only
the layer weights w do not). The teacher then trains in train mode (dropout on), is in the
optimizer with the student, and is saved in checkpoints.

Differences from the official DE -> DE setting (``distill_from_12de_to_6de.sh``), chosen here:

* by default (``train_teacher: false``) the teacher is **frozen** (eval mode, no gradient, not in
  the optimizer, not in checkpoints), which halves the memory and keeps the target fixed;
* layers are 1-based Transformer layers (the embedding output is not a candidate layer); both
  models pool and normalise every layer as they pool their output. The official ``select_layer``
  draws from as many indices as the model has layers, out of hidden states that its modified
  encoders return; whether index 0 there is the embedding output is not settled by the code read.

Under data parallelism every device scores its queries against all devices' passages (the
student's and a training teacher's gathered with gradient), and weighs the layers by its own
queries' teacher losses, as the official code does per GPU; with K = 1 the weight is 1 and two
processes give the single-process loss and gradients (``tests/test_distributed.py``).

Without a teacher the module is exactly :class:`BiEncoderModule` (the "student alone" baseline);
with ``layers=0`` it distils the final scores only (response-based distillation). Validation and
test score the student alone, so ``val/loss`` is the student's InfoNCE in every arm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from keel.core.checkpoint import SkipsFrozenWeights
from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.lead.model import (
    layer_distillation,
    layer_embeddings,
    masked_scores,
    num_layers,
    sample_layers,
    score_kl,
)
from keel.retrieval.nn.biencoder import BiEncoder
from keel.retrieval.nn.loss import ContrastiveOutput, contrastive_loss

LOSS_TERMS = ("contrastive", "final", "layers")
WEIGHTINGS = ("teacher_loss", "uniform")


class LEADModule(SkipsFrozenWeights, BiEncoderModule):
    """Train a student bi-encoder with LEAD's layer-wise distillation from a frozen teacher bi-encoder.

    Args:
        model: The student (e.g. :func:`keel.retrieval.lead.truncated_biencoder`).
        optimizer: Factory taking the student's parameters.
        teacher: The teacher bi-encoder; ``None`` trains the student alone.
        layers: K, the layer pairs distilled (at most the smaller model's layer count; 0: none).
        resample_every: Draw new layers every this many optimizer steps (official: 10).
        distill_temperature: T, dividing the teacher's scores in every KL (official: 1).
        layer_temperature: tau of the layer weights softmax(-NLL / tau) (official: 10).
        layer_weighting: ``teacher_loss`` (LEAD) or ``uniform``.
        loss_weights: ``contrastive``, ``final`` and ``layers`` multipliers (default 1 each).
        train_teacher: Train the teacher jointly (its InfoNCE and the reverse final KL; see the
            module docstring), as the official ``--train_de``.
        seed: Seed of the layer draws.
        scheduler: Optional factory taking the optimizer, stepped every optimizer step.
        gather_across_devices: Score each query against every device's passages.
    """

    frozen_prefixes = ("teacher.",)  # rebuilt from its own folder, never saved

    hparams_ignore = (*BiEncoderModule.hparams_ignore, "teacher")

    def __init__(
        self,
        model: BiEncoder,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        teacher: BiEncoder | None = None,
        layers: int = 2,
        resample_every: int = 10,
        distill_temperature: float = 1.0,
        layer_temperature: float = 10.0,
        layer_weighting: str = "teacher_loss",
        loss_weights: Mapping[str, float] | None = None,
        seed: int = 0,
        train_teacher: bool = False,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, gather_across_devices)
        weights = {name: 1.0 for name in LOSS_TERMS} | dict(loss_weights or {})
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"loss_weights: unknown terms {unknown}; terms are {', '.join(LOSS_TERMS)}")
        if resample_every < 1 or distill_temperature <= 0 or layer_temperature <= 0:
            raise ConfigError("resample_every must be >= 1 and both temperatures > 0")
        if layer_weighting not in WEIGHTINGS:
            raise ConfigError(f"layer_weighting must be one of {', '.join(WEIGHTINGS)}, got '{layer_weighting}'")
        if teacher is not None:
            sample_layers(num_layers(model), num_layers(teacher), layers, seed, 0)  # checks K
            if not train_teacher:
                teacher = teacher.eval().requires_grad_(False)
        elif train_teacher:
            raise ConfigError("train_teacher needs a teacher")
        if train_teacher:
            self.frozen_prefixes = ()  # a trained teacher is saved and resumed like the student
        self.teacher = teacher
        self.layers = layers
        self.resample_every = resample_every
        self.distill_temperature = distill_temperature
        self.layer_temperature = layer_temperature
        self.layer_weighting = layer_weighting
        self.loss_weights = weights
        self.seed = seed
        self.train_teacher = train_teacher

    def train(self, mode: bool = True) -> LEADModule:
        """Switch the student's mode; a frozen teacher always stays in eval mode (no dropout)."""
        super().train(mode)
        if self.teacher is not None and not self.train_teacher:
            self.teacher.eval()
        return self

    def current_layers(self) -> tuple[list[int], list[int]]:
        """The (student, teacher) layers distilled at the current global step."""
        assert self.teacher is not None
        block = self.global_step // self.resample_every  # the global step is 0 outside a trainer
        return sample_layers(num_layers(self.model), num_layers(self.teacher), self.layers, self.seed, block)

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> ContrastiveOutput:
        """The student's InfoNCE, plus LEAD's distillation terms while training with a teacher.

        The returned output holds the total loss and the student's final-layer logits (for the
        in-batch metrics).
        """
        if self.teacher is None or not self.training:
            return super().forward_loss(batch)
        queries = (batch["query_input_ids"], batch["query_attention_mask"])
        passages = (batch["passage_input_ids"], batch["passage_attention_mask"])
        student_q = layer_embeddings(self.model, *queries, tower="query")
        student_p = layer_embeddings(self.model, *passages, tower="passage")
        with torch.set_grad_enabled(self.train_teacher):
            teacher_q = layer_embeddings(self.teacher, *queries, tower="query")
            teacher_p = layer_embeddings(self.teacher, *passages, tower="passage")
        grads = self.train_teacher  # whether the teacher's gathered candidates keep their gradient
        distributed = self.gather_across_devices and self._trainer is not None and self.trainer.world_size > 1
        rank = self.global_rank if distributed else 0

        def candidates(embeddings: torch.Tensor, grads: bool) -> torch.Tensor:
            return self._gather(embeddings, grads) if distributed else embeddings

        out = contrastive_loss(
            student_q[-1],
            student_p[-1],
            batch["passage_ids"],
            batch["relevant_ids"],
            self.model.temperature,
            gather=self._gather if distributed else None,
            rank=rank,
        )
        mask, t_student, t_teacher = out.false_negatives, self.model.temperature, self.teacher.temperature
        teacher_final = masked_scores(teacher_q[-1], candidates(teacher_p[-1], grads), t_teacher, mask)
        final = score_kl(teacher_final, out.logits, mask, self.distill_temperature)
        student_layers, teacher_layers = self.current_layers()
        layered = layer_distillation(
            [masked_scores(teacher_q[a], candidates(teacher_p[a], grads), t_teacher, mask) for a in teacher_layers],
            [masked_scores(student_q[b], candidates(student_p[b], True), t_student, mask) for b in student_layers],
            out.labels,
            mask,
            self.distill_temperature,
            self.layer_temperature,
            self.layer_weighting,
        )
        w = self.loss_weights
        total = w["contrastive"] * out.loss + w["final"] * final + w["layers"] * layered.loss
        logged = {"contrastive": out.loss, "final_kl": final, "layer_kl": layered.loss}
        if layered.weights.numel():  # how far the teacher-loss weights are from uniform (1 / K)
            logged["layer_weight_max"] = layered.weights.max()
        if self.train_teacher:
            teacher_own = torch.nn.functional.cross_entropy(teacher_final, out.labels)
            reverse = score_kl(out.logits, teacher_final, mask, self.distill_temperature)
            total = total + w["contrastive"] * teacher_own + w["final"] * reverse
            logged |= {"teacher_contrastive": teacher_own, "final_kl_reverse": reverse}
        if self._trainer is not None:
            size = out.labels.numel()
            for name, value in logged.items():
                self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False, batch_size=size)
        return ContrastiveOutput(total, out.logits, out.labels, out.false_negatives)
