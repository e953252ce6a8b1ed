"""Pre-train with MASTER's multi-task bottlenecked autoencoding, then fine-tune the encoder as a bi-encoder.

One run is a plan of two stages (``steps: {pretrain: N, finetune: M}``; a stage with 0 steps is
skipped, so ``pretrain: 0`` is the no-pre-training baseline and ``finetune: 0`` a pre-training run
whose checkpoint :func:`~keel.retrieval.master.biencoder_from_checkpoint` loads for a separate
:class:`~keel.retrieval.biencoder.BiEncoderModule` run):

1. ``pretrain``: the loss of Zhou et al. (2023), every term weighted 1 (the authors' code sums them):

       L = sum over encoder passes P of MLM_enc(P) + sum over tasks T of L_dec(T)

   where each encoder pass predicts its own masked tokens, and each task's decoder predicts its
   labelled tokens from the pass's [CLS] bottleneck and its own corrupted input (token
   cross-entropy; binary cross-entropy for replaced-token detection). The ``main`` pass (the whole
   passage, 30% masked) runs in every pre-training, whatever the tasks, as the authors' loss always
   includes it; the neighbour and complementary tasks add their own passes.
2. ``finetune``: :class:`~keel.retrieval.biencoder.BiEncoderModule`'s contrastive step on the same
   encoder (one shared tower, [CLS] pooling by default); the decoders are no longer used.

:class:`MasterModule` *is* a ``BiEncoderModule`` whose bi-encoder shares the autoencoder's encoder,
so validation, test, metrics and checkpoints are the bi-encoder's: ``keel retrieval evaluate
--model <run>/checkpoints/last.ckpt`` scores a run directly.

One optimizer holds every parameter (DeepSpeed supports one), in groups whose learning rates follow
:func:`keel.core.distill.pipeline.staged_schedule`: the encoder trains in both stages, the decoders
and the MLM head only in ``pretrain``, a learned temperature only in ``finetune``. Entering
fine-tuning clears the optimizer state (:func:`keel.core.distill.pipeline.clear_optimizer_state`,
also under ZeRO), so fine-tuning starts the same way after pre-training as from the random
initialisation, and (with ``zero_shot_split``)
ranks the split's judged pool with the encoder as pre-training left it, logged as ``zeroshot/pool_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from keel.core.checkpoint import SkipsFrozenWeights
from keel.core.distill.pipeline import clear_optimizer_state, staged_schedule
from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.master.data import stage_plan
from keel.retrieval.master.generator import TokenGenerator
from keel.retrieval.master.masking import IGNORE
from keel.retrieval.master.model import (
    ENCODER_PASS,
    GENERATOR_TASKS,
    BottleneckedAutoencoder,
    encoder_passes,
    mean_pairwise_cosine,
)

STAGE_KEY = "master_stage"


class MasterModule(SkipsFrozenWeights, BiEncoderModule):
    """MASTER pre-training then bi-encoder fine-tuning of one encoder (see the module docstring).

    Args:
        model: The autoencoder; its ``tasks`` decide the decoders and the pre-training loss.
        steps: Optimizer steps per stage, ``{pretrain: N, finetune: M}``.
        optimizer: Factory taking parameter groups; its learning rate is replaced by ``learning_rates``.
        learning_rates: Peak learning rate per stage that runs.
        warmup_fraction: Share of each stage's steps spent warming its learning rate up (then linear decay).
        pooling: The fine-tuned bi-encoder's pooling (``cls``: the pre-trained bottleneck).
        normalize: L2-normalise the bi-encoder's embeddings.
        temperature: The contrastive loss's temperature.
        learn_temperature: Learn it (in fine-tuning).
        generator: A frozen :class:`~keel.retrieval.master.generator.TokenGenerator`; required by,
            and only allowed with, the ``corrupted`` and ``replaced`` tasks.
        zero_shot_split: Rank this split's judged pool when fine-tuning starts (``None``: do not).
        gather_across_devices: Score fine-tuning queries against every device's passages.

    Raises:
        ConfigError: If the plan, the tasks, the learning rates and the generator do not agree.
    """

    frozen_prefixes = ("generator.",)  # rebuilt from its own folder, never saved

    hparams_ignore = (*BiEncoderModule.hparams_ignore, "generator")

    def __init__(
        self,
        model: BottleneckedAutoencoder,
        steps: Mapping[str, int],
        optimizer: Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer],
        learning_rates: Mapping[str, float],
        warmup_fraction: float = 0.1,
        pooling: str = "cls",
        normalize: bool = True,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        generator: TokenGenerator | None = None,
        zero_shot_split: str | None = "test",
        gather_across_devices: bool = True,
    ) -> None:
        biencoder = model.as_biencoder(pooling, normalize, temperature, learn_temperature)
        super().__init__(biencoder, optimizer, None, gather_across_devices)
        self.plan = stage_plan(steps)
        names = [name for name, _ in self.plan]
        if ("pretrain" in names) != bool(model.tasks):
            raise ConfigError("model: pre-training steps need tasks, and tasks need pre-training steps > 0")
        wants_generator = any(t in GENERATOR_TASKS for t in model.tasks)
        if wants_generator != (generator is not None):
            raise ConfigError("the corrupted/replaced tasks need a generator, and a generator needs one of them")
        if generator is not None and generator.vocab_size != model.vocab_size:
            raise ConfigError(
                f"the generator's vocabulary ({generator.vocab_size}) is not the encoder's ({model.vocab_size})"
            )
        missing = [name for name in names if name not in learning_rates]
        if missing:
            raise ConfigError(f"learning_rates: no peak learning rate for stage(s) {missing}")
        self.autoencoder = model
        self.generator = generator
        self.learning_rates = dict(learning_rates)
        self.warmup_fraction = warmup_fraction
        self.zero_shot_split = zero_shot_split
        self.entered: str | None = None  # the last stage started (saved in checkpoints)
        self.bottleneck: torch.Tensor | None = None  # the last pre-training batch's [CLS] vectors (first pass)

    # ------------------------------------------------------------------ pre-training

    def pretraining_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every term of the pre-training loss for one batch, and their sum as ``loss``."""
        model = self.autoencoder
        terms: dict[str, torch.Tensor] = {}
        bottleneck: dict[str, torch.Tensor] = {}
        for name in encoder_passes(model.tasks):
            hidden = model.encode(batch[f"{name}_encoder_input_ids"], batch[f"{name}_encoder_attention_mask"])
            terms[f"{name}_encoder_mlm"] = model.mlm_loss(hidden, batch[f"{name}_encoder_labels"])
            bottleneck[name] = hidden[:, 0]
        self.bottleneck = next(iter(bottleneck.values())).detach() if bottleneck else None
        for task in ("keywords", "neighbour", "complementary"):
            if task in model.tasks:
                hidden = model.decode(
                    task, bottleneck[ENCODER_PASS[task]], batch[f"{task}_input_ids"], batch[f"{task}_attention_mask"]
                )
                terms[task] = model.mlm_loss(hidden, batch[f"{task}_labels"])
        if any(t in GENERATOR_TASKS for t in model.tasks):
            terms.update(self.generator_losses(batch, bottleneck["main"]))
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms

    def generator_losses(self, batch: dict[str, torch.Tensor], bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``corrupted`` and ``replaced`` terms over the generator's filling of the masked passage."""
        assert self.generator is not None
        model = self.autoencoder
        positions, original = batch["generator_positions"], batch["text_ids"]
        mask = batch["generator_attention_mask"]
        proposed = self.generator(batch["generator_input_ids"], mask, positions)
        corrupted = torch.where(positions, proposed, original)
        terms = {}
        if "corrupted" in model.tasks:
            hidden = model.decode("corrupted", bottleneck, corrupted, mask)
            terms["corrupted"] = model.mlm_loss(hidden, torch.where(positions, original, IGNORE))
        if "replaced" in model.tasks:
            hidden = model.decode("replaced", bottleneck, corrupted, mask)
            terms["replaced"] = model.replaced_loss(hidden, corrupted != original, batch["word_positions"])
        return terms

    # ------------------------------------------------------------------ the plan

    def enter(self, stage: str) -> None:
        """Start a stage; entering fine-tuning resets the encoder's optimizer state and logs the zero-shot pool."""
        self.entered = stage
        if stage != "finetune":
            return
        clear_optimizer_state(self.optimizers(use_pl_optimizer=False))  # the decoders train no more
        if self.zero_shot_split is not None:
            self.log_zero_shot(self.zero_shot_split)

    def log_zero_shot(self, split: str) -> None:
        """Rank ``split``'s judged pool with the encoder as it enters fine-tuning (``zeroshot/pool_*``)."""
        from keel.retrieval.eval.pool import pool_ranking

        data = getattr(getattr(self.trainer, "datamodule", None), "data", None)
        if data is None:
            raise ConfigError("zero_shot_split ranks the datamodule's data; train with a MasterDataModule")
        for name, value in pool_ranking(self.model, data, split).items():
            self.log(f"zeroshot/{name}", value, on_step=False, on_epoch=True, batch_size=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The loss of the batch's stage."""
        stage = batch["stage"]
        if stage != self.entered:
            self.enter(stage)
        if stage == "finetune":
            return self.step({k: v for k, v in batch.items() if k != "stage"}, "train")
        terms = self.pretraining_losses(batch)
        size = next(v for k, v in batch.items() if k.endswith("_input_ids")).shape[0]
        self.log("train/pretrain_loss", terms["loss"], prog_bar=True, batch_size=size)
        if self.bottleneck is not None and size > 1:  # how alike the batch's [CLS] vectors are
            self.log("train/bottleneck_cosine", mean_pairwise_cosine(self.bottleneck), batch_size=size)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/pretrain_{name}", value, batch_size=size)
        return terms["loss"]

    def parameter_groups(self) -> list[tuple[list[str], list[nn.Parameter]]]:
        """``(stages it trains in, parameters)``: the encoder, the pre-training heads, the bi-encoder's own."""
        names = [name for name, _ in self.plan]
        encoder = list(self.autoencoder.encoder.parameters())
        seen = {id(p) for p in encoder}
        heads = [p for p in self.autoencoder.parameters() if id(p) not in seen]
        seen |= {id(p) for p in heads}
        own = [p for p in self.model.parameters() if id(p) not in seen]  # a learned temperature
        groups = [(names, encoder), (["pretrain"], heads), (["finetune"], own)]
        return [(stages, params) for stages, params in groups if params and set(stages) & set(names)]

    def configure_optimizers(self) -> Any:
        """One optimizer over every group, each with its staged warm-up/decay schedule (stepped every step)."""
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory([{"params": params} for _, params in groups])
        shapes = [
            staged_schedule(self.plan, stages, self.learning_rates, group["lr"], self.warmup_fraction)
            for (stages, _), group in zip(groups, optimizer.param_groups, strict=True)
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shapes)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The bi-encoder's architecture, and the current stage (a resumed run neither resets nor re-ranks)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[STAGE_KEY] = self.entered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the current stage."""
        self.entered = checkpoint.get(STAGE_KEY)
