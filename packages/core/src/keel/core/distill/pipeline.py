"""Distil, then fine-tune and evaluate, in one Lightning run (the MiniLM experiment's protocol).

A run is a plan of consecutive stages, each a number of optimizer steps:

1. ``assistant`` (optional): distil a teacher assistant (e.g. 4 layers) from the teacher. MiniLM
   (Section 3.3) distils a large teacher into a mid-sized assistant first, then the assistant into
   the small student, when the size gap is large.
2. ``distill``: distil the student from the assistant if there is one, else from the teacher, with
   the MiniLM loss or the hidden-state MSE baseline (:func:`keel.core.distill.distillation_losses`).
3. ``finetune``: train the student as a bi-encoder on definition -> headword pairs with in-batch
   InfoNCE (:mod:`keel.core.distill.retrieval`).

A stage with 0 steps is skipped: the "from scratch" baseline is ``distill: 0`` and no teacher at all
(the teacher is never loaded), and the teacher's own score is the same fine-tuning applied to the
teacher as the student. Each stage has its own peak learning rate and a linear warm-up / linear
decay schedule over its own steps, and the student's optimizer state is reset when fine-tuning
starts, so the fine-tuning is the same whatever came before it.

Right before fine-tuning, the model is evaluated on the test split as it is ("zero-shot", logged
as ``zeroshot/...``); after training, validation and test report the fine-tuned model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from keel.core.checkpoint import SkipsFrozenWeights
from keel.core.data.sampling import ResumableDataLoader
from keel.core.distill.data import WordPieceTextDataModule
from keel.core.distill.module import OBJECTIVES, distillation_losses, width_lift
from keel.core.distill.retrieval import DefinitionRetrievalDataModule, RetrievalEvaluator, embed, info_nce
from keel.core.errors import ConfigError

STAGES = ("assistant", "distill", "finetune")


def stage_plan(steps: Mapping[str, int]) -> list[tuple[str, int]]:
    """The stages that run, in order, with their step counts.

    Raises:
        ConfigError: On an unknown stage name or a negative count.
    """
    unknown = set(steps) - set(STAGES)
    if unknown:
        raise ConfigError(f"steps: unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    if any(int(v) < 0 for v in steps.values()):
        raise ConfigError(f"steps: counts must be >= 0, got {dict(steps)}")
    return [(name, int(steps.get(name, 0))) for name in STAGES if int(steps.get(name, 0)) > 0]


def _cycle(loader: Iterable[Any], start: int) -> Iterator[Any]:
    """Batches of ``loader`` forever, epoch after epoch, beginning ``start`` batches in."""
    if isinstance(loader, ResumableDataLoader):
        per_epoch = len(loader)
        epoch = start // per_epoch
        loader.load_state_dict({"epoch": epoch, "batches_yielded": start % per_epoch, "seed": loader.sampler.seed})
        while True:
            yield from loader
            epoch += 1
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    else:
        yield from itertools.islice(itertools.cycle(loader), start, None)


class StagedLoader:
    """Yields each stage's batches for that stage's steps, tagged with ``batch["stage"]``.

    It has a ``state_dict`` (the batches yielded), so Lightning resumes a run mid-stage at the batch
    it stopped at.

    Args:
        stages: ``(name, loader, steps)`` in order; a loader shorter than its steps is cycled.
    """

    def __init__(self, stages: list[tuple[str, Iterable[dict[str, Any]], int]]) -> None:
        self.stages = stages
        self.yielded = 0
        self.start = 0

    def __len__(self) -> int:
        return sum(steps for _, _, steps in self.stages)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start, self.start = self.start, 0
        self.yielded = start
        for name, loader, steps in self.stages:
            if start >= steps:
                start -= steps
                continue
            for batch in itertools.islice(_cycle(loader, start), steps - start):
                self.yielded += 1
                yield {**batch, "stage": name}
            start = 0

    def state_dict(self) -> dict[str, int]:
        """How many batches have been yielded."""
        return {"yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next pass continue right after the batches already seen."""
        self.start = int(state["yielded"])


class DistillRetrievalDataModule(L.LightningDataModule):
    """Distillation text for the distillation stages, definition pairs for fine-tuning and evaluation.

    Every val and test headword of ``task`` is added to ``text``'s excluded words before its text is
    read, so no distillation sentence mentions an evaluated word.

    Args:
        task: The definition -> headword task.
        text: The unlabelled text; not read at all when the plan has no distillation stage.
        steps: The run's plan (``{"assistant": 0, "distill": 400, "finetune": 300}``); must equal the model's.
    """

    def __init__(
        self,
        task: DefinitionRetrievalDataModule,
        steps: Mapping[str, int],
        text: WordPieceTextDataModule | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.text = text
        self.plan = stage_plan(steps)
        self.distills = any(name != "finetune" for name, _ in self.plan)
        self._described = False
        if self.distills and text is None:
            raise ConfigError("data: the plan has distillation steps but no text: data module")

    def setup(self, stage: str | None = None) -> None:
        """Prepare the task, and the distillation text (without the held-out words) when needed."""
        self.task.setup(stage)
        if self.distills and self.text is not None:
            split = self.task.split()
            held_out = set(split.headwords("val")) | set(split.headwords("test"))
            self.text.exclude_words = frozenset(self.text.exclude_words | held_out)
            self.text.setup(stage)
        if not self._described:
            self._described = True
            print(self.describe(), flush=True)

    def describe(self) -> str:
        """One line with the sizes of the task's splits and of the distillation text (printed at setup)."""
        split = self.task.split()
        parts = [
            f"{name} {len(split.headwords(name)):,} headwords / {len(getattr(split, name)):,} pairs"
            for name in ("train", "val", "test")
        ]
        text = f"test definitions {len({p.definition for p in split.test}):,}"
        if self.distills and self.text is not None and self.text.corpus is not None:
            corpus = self.text.corpus
            kept = len(corpus.train) + len(corpus.val)
            text += (
                f"; distillation sentences {kept:,} used, {corpus.dropped:,} dropped for containing a held-out headword"
            )
        return "data: " + ", ".join(parts) + "; " + text

    def train_dataloader(self) -> StagedLoader:
        """The plan's batches, stage after stage."""
        loaders = {"finetune": self.task.train_dataloader()}
        if self.distills and self.text is not None:
            loaders["assistant"] = loaders["distill"] = self.text.train_dataloader()
        return StagedLoader([(name, loaders[name], steps) for name, steps in self.plan])

    def val_dataloader(self) -> DataLoader:
        """The validation pairs."""
        return self.task.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The test pairs."""
        return self.task.test_dataloader()


def warmup_linear(steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_fraction`` of ``steps``, then linear decay to 0."""
    warmup = max(1, math.ceil(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def staged_schedule(
    plan: list[tuple[str, int]],
    stages: Iterable[str],
    learning_rates: Mapping[str, float],
    base_lr: float,
    warmup: float,
) -> Callable[[int], float]:
    """The LR factor (of ``base_lr``) of a parameter group that trains in ``stages`` at global step ``step``.

    Inside one of its stages the group follows that stage's warm-up/decay at the stage's peak rate; in
    any other stage its rate is 0, so the optimizer leaves it untouched.
    """
    windows, start = [], 0
    for name, steps in plan:
        windows.append((name, start, steps, warmup_linear(steps, warmup)))
        start += steps
    active = set(stages)

    def factor(step: int) -> float:
        for name, first, steps, shape in windows:
            if first <= step < first + steps:
                return learning_rates[name] / base_lr * shape(step - first) if name in active else 0.0
        return 0.0

    return factor


def clear_optimizer_state(optimizer: Any) -> None:
    """Forget every moment and step count of ``optimizer``, so its next step starts as a fresh one's.

    Staged training calls it when fine-tuning starts: every parameter that keeps training (the
    encoder) then starts as it would from scratch, and parameters that stop training (decoders,
    teachers, at learning rate 0) need no state. A DeepSpeed ZeRO optimizer's ``state`` is its inner
    optimizer's, keyed by flat fp32 partitions rather than by the model's parameters, so the state is
    cleared whole rather than per parameter; Adam, AdamW, FusedAdam and DeepSpeedCPUAdam all build a
    missing state again on their next step.
    """
    state = getattr(optimizer, "state", None)
    if state is not None:
        state.clear()


class DistillThenRetrieve(SkipsFrozenWeights, L.LightningModule):
    """Distil a student (optionally through a teacher assistant), then fine-tune it for retrieval.

    One optimizer holds every trained parameter (DeepSpeed supports one), in a parameter group per
    trained model; each group's learning rate follows :func:`staged_schedule`, so it is 0 outside the
    group's stages. When the student enters fine-tuning the optimizer state (Adam's moments) is cleared
    (:func:`clear_optimizer_state`, also under ZeRO), so fine-tuning starts the same way after
    distillation as from scratch.

    Args:
        student: The model that is fine-tuned and evaluated (for the teacher's own score: the teacher).
        steps: Optimizer steps per stage: ``assistant``, ``distill``, ``finetune`` (see the module docstring).
        optimizer: Factory taking parameter groups; its learning rate is replaced by ``learning_rates``.
        learning_rates: Peak learning rate per stage (``distill`` also serves ``assistant`` when not given).
        teacher: The frozen model distilled from; needed, and only allowed, when a distillation stage runs.
        assistant: The teacher assistant; needed, and only allowed, when ``steps.assistant > 0``.
        objective: ``minilm`` or ``hidden_mse`` (both distillation stages use it).
        relation_heads: MiniLM relation heads when head counts differ (MiniLMv2-style re-split).
        temperature: InfoNCE temperature of fine-tuning.
        warmup_fraction: Share of each stage's steps spent warming the learning rate up.
        zero_shot: Evaluate on the test split right before fine-tuning.
    """

    frozen_prefixes = ("teacher.",)  # rebuilt from its own folder, never saved

    def __init__(
        self,
        student: nn.Module,
        steps: Mapping[str, int],
        optimizer: Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer],
        learning_rates: Mapping[str, float],
        teacher: nn.Module | None = None,
        assistant: nn.Module | None = None,
        objective: str = "minilm",
        relation_heads: int | None = None,
        temperature: float = 0.05,
        warmup_fraction: float = 0.1,
        zero_shot: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "assistant", "optimizer"])
        self.plan = stage_plan(steps)
        names = [name for name, _ in self.plan]
        self.learning_rates = {**learning_rates}
        if "assistant" in names and "assistant" not in self.learning_rates and "distill" in self.learning_rates:
            self.learning_rates["assistant"] = self.learning_rates["distill"]
        _check_plan(names, teacher, assistant, objective, self.learning_rates)
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.assistant = assistant
        self.objective = objective
        self.relation_heads = relation_heads
        self.temperature = temperature
        self.warmup_fraction = warmup_fraction
        self.zero_shot = zero_shot
        self.optimizer_factory = optimizer
        lifts: dict[str, nn.Module | None] = {}
        if teacher is not None and assistant is not None:
            lifts["assistant"] = width_lift(assistant, teacher, objective)
        if "distill" in names:
            lifts["distill"] = width_lift(student, self.mimicked(), objective)
        self.lifts = nn.ModuleDict({k: v for k, v in lifts.items() if v is not None})
        self.stage = names[0]
        self.entered: str | None = None  # the last stage started (saved in checkpoints)
        self.evaluator: RetrievalEvaluator | None = None

    def mimicked(self) -> nn.Module:
        """The model the student distils from: the assistant if there is one, else the teacher."""
        model = self.assistant if self.assistant is not None else self.teacher
        if model is None:
            raise ConfigError("no teacher to distil from")
        return model

    def train(self, mode: bool = True) -> DistillThenRetrieve:
        """Switch modes; frozen models (the teacher, a finished assistant) always stay in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        if self.assistant is not None and self.stage != "assistant":
            self.assistant.eval()
        return self

    def parameter_groups(self) -> list[tuple[list[str], list[nn.Parameter]]]:
        """``(stages it trains in, parameters)`` for every trained model."""
        names = [name for name, _ in self.plan]
        groups = [([n for n in names if n in ("distill", "finetune")], list(self.student.parameters()))]
        if self.assistant is not None:
            groups.append((["assistant"], list(self.assistant.parameters())))
        groups += [([stage], list(lift.parameters())) for stage, lift in self.lifts.items()]
        return groups

    def configure_optimizers(self) -> Any:
        """One optimizer over every trained model, with a per-group staged schedule (stepped every step)."""
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory([{"params": params} for _, params in groups])
        shapes = [
            staged_schedule(self.plan, stages, self.learning_rates, group["lr"], self.warmup_fraction)
            for (stages, _), group in zip(groups, optimizer.param_groups, strict=True)
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shapes)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def stage_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The loss terms of the batch's stage (``loss`` is minimised)."""
        stage = batch["stage"]
        if stage == "finetune":
            queries = embed(self.student, batch["query_ids"], batch["query_mask"])
            documents = embed(self.student, batch["doc_ids"], batch["doc_mask"])
            return {"loss": info_nce(queries, documents, self.temperature, batch["candidate"])}
        if stage == "assistant":
            assert self.assistant is not None
            assert self.teacher is not None
            student, teacher = self.assistant, self.teacher
        else:
            student, teacher = self.student, self.mimicked()
        lift = self.lifts[stage] if stage in self.lifts else None  # noqa: SIM401 - ModuleDict has no .get
        return distillation_losses(student, teacher, batch, self.objective, self.relation_heads, lift)

    def enter(self, stage: str) -> None:
        """Start a stage: freeze a finished assistant; reset the student's optimizer state for fine-tuning."""
        self.stage = self.entered = stage
        self.train(self.training)
        if stage == "finetune":
            clear_optimizer_state(self.optimizers(use_pl_optimizer=False))
            if self.zero_shot:
                self.log_zero_shot()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The loss of the batch's stage."""
        stage = batch["stage"]
        if stage != self.entered:
            self.enter(stage)
        terms = self.stage_loss(batch)
        size = len(batch["query_ids"] if stage == "finetune" else batch["input_ids"])
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/{stage}_{name}", value, batch_size=size)
        return terms["loss"]

    @torch.no_grad()
    def evaluate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Retrieval metrics of the student on every pair of a split's loader, in eval mode."""
        was_training = self.student.training
        self.student.eval()
        evaluator = RetrievalEvaluator(loader.dataset.retrieval)  # type: ignore[attr-defined]
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            queries = embed(self.student, batch["query_ids"], batch["query_mask"])
            documents = embed(self.student, batch["doc_ids"], batch["doc_mask"])
            evaluator.update(batch, queries, documents)
        self.student.train(was_training)
        return evaluator.compute()

    def log_zero_shot(self) -> None:
        """Log the test metrics of the model as it enters fine-tuning (``zeroshot/...``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ConfigError("zero_shot=true evaluates the datamodule's test split; run with a datamodule")
        for name, value in self.evaluate(datamodule.test_dataloader()).items():
            self.log(f"zeroshot/{name}", value, on_step=False, on_epoch=True, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the current stage, so a resumed run neither resets its optimizer nor re-runs zero-shot."""
        checkpoint["distill_stage"] = self.entered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the current stage."""
        self.entered = checkpoint.get("distill_stage")
        if self.entered is not None:
            self.stage = self.entered

    def on_validation_epoch_start(self) -> None:
        """Start collecting the validation split's embeddings."""
        self.evaluator = RetrievalEvaluator(self.trainer.val_dataloaders.dataset.retrieval)  # type: ignore[union-attr]

    def on_test_epoch_start(self) -> None:
        """Start collecting the test split's embeddings."""
        self.evaluator = RetrievalEvaluator(self.trainer.test_dataloaders.dataset.retrieval)  # type: ignore[union-attr]

    def eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """In-batch InfoNCE of an evaluation batch; records its embeddings for the split's metrics."""
        queries = embed(self.student, batch["query_ids"], batch["query_mask"])
        documents = embed(self.student, batch["doc_ids"], batch["doc_mask"])
        loss = info_nce(queries, documents, self.temperature, batch["candidate"])
        assert self.evaluator is not None
        self.evaluator.update(batch, queries, documents)
        self.log(f"{stage}/loss", loss, batch_size=len(queries))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """See :meth:`eval_step`."""
        return self.eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """See :meth:`eval_step`."""
        return self.eval_step(batch, "test")

    def _log_retrieval(self, stage: str) -> None:
        assert self.evaluator is not None
        for name, value in self.evaluator.compute().items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "mrr@10", batch_size=1)
        self.evaluator = None

    def on_validation_epoch_end(self) -> None:
        """Log the validation split's MRR@10 and recall@k."""
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        """Log the test split's MRR@10 and recall@k."""
        self._log_retrieval("test")


def _check_plan(
    names: list[str],
    teacher: nn.Module | None,
    assistant: nn.Module | None,
    objective: str,
    learning_rates: Mapping[str, float],
) -> None:
    distills = "assistant" in names or "distill" in names
    if "finetune" not in names:
        raise ConfigError("steps: the plan needs finetune steps > 0 (the evaluated model is fine-tuned)")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    if distills and teacher is None:
        raise ConfigError("steps: distillation stages need a teacher; set model.teacher or steps.distill=0")
    if teacher is not None and not distills:
        raise ConfigError("model.teacher is set but no distillation stage runs; set model.teacher=null")
    if "assistant" in names and "distill" not in names:
        raise ConfigError("steps: a teacher assistant is only useful with steps.distill > 0 (it teaches the student)")
    if ("assistant" in names) != (assistant is not None):
        raise ConfigError(
            "a teacher assistant needs steps.assistant > 0, and steps.assistant > 0 needs model.assistant"
        )
    missing = [name for name in names if name not in learning_rates]
    if missing:
        raise ConfigError(f"learning_rates: no peak learning rate for stage(s) {missing}")
