"""Pre-training then fine-tuning in one BiEncoderModule loop: stage order, learning rates, fresh moments."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from keel.core.errors import ConfigError
from keel.retrieval.data import RetrievalDataModule
from keel.retrieval.eval.pool import PoolRanking
from keel.retrieval.ict_bfs_wlp import PretrainFinetuneDataModule, PretrainThenFinetune, stage_plan
from keel.retrieval.nn import biencoder_from_scratch


class Recorder(L.Callback):
    """Each step's stage, the learning rate it used, and Adam's step count of one parameter after it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int]] = []
        self.rate = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.rate = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        optimizer = trainer.optimizers[0]
        param = next(module.model.parameters())
        self.rows.append((batch["stage"], self.rate, int(optimizer.state[param]["step"])))


class TitlePairs:
    """Pre-training pairs of the tiny corpus: each passage's title is its query."""

    def __call__(self, data: Any) -> list[tuple[str, str]]:
        return [(passage.title, pid) for pid, passage in data.corpus.items()]


class NeverCalled:
    """A pair builder that fails the test when the pre-training data is read."""

    def __call__(self, data: object) -> list:
        raise AssertionError("the pre-training pairs were built although no pre-training step runs")


def _run(
    tmp_path: Path, model_dir: Path, beir: Path, steps: dict[str, int], pairs: Any, callbacks: list
) -> tuple[PretrainThenFinetune, dict[str, Any]]:
    """Fit and test; returns the module and every metric logged (fit's, then test's)."""
    torch.manual_seed(0)
    model = biencoder_from_scratch(str(model_dir), num_hidden_layers=1)
    module = PretrainThenFinetune(
        model,
        functools.partial(torch.optim.AdamW, lr=1.0),
        steps,
        {"pretrain": 1e-3, "finetune": 1e-4},
        warmup_fraction=0.5,
    )
    data = PretrainFinetuneDataModule(
        RetrievalDataModule(str(beir), str(model_dir), negatives=1, batch_size=2),
        steps,
        RetrievalDataModule(str(beir), str(model_dir), train_pairs=pairs, batch_size=2),
    )
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1,
        callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    metrics = dict(trainer.callback_metrics)
    trainer.test(module, datamodule=data, verbose=False)
    return module, metrics | dict(trainer.callback_metrics)


def test_stages_run_in_order_with_their_rates_and_fresh_moments(
    tmp_path: Path, tiny_model_dir: Path, tiny_beir: Path
) -> None:
    recorder = Recorder()
    pool = PoolRanking(str(tiny_beir), split="test")
    steps = {"pretrain": 4, "finetune": 4}
    module, metrics = _run(tmp_path, tiny_model_dir, tiny_beir, steps, TitlePairs(), [recorder, pool])
    stages = [stage for stage, _, _ in recorder.rows]
    assert stages == ["pretrain"] * 4 + ["finetune"] * 4
    # each stage: 2 warm-up steps up to its own peak, then linear decay over the other 2
    rates = [lr for _, lr, _ in recorder.rows]
    assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4, 5e-5, 1e-4, 1e-4, 5e-5])
    # Adam's step counter restarts when fine-tuning starts: its moments were dropped
    assert [count for _, _, count in recorder.rows] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert module.entered == "finetune"
    assert {"zeroshot/pool_mrr@10", "test/pool_mrr@10", "test/pool_recall@100"} <= set(metrics)


def test_no_pretraining_never_reads_the_pretraining_data(tmp_path: Path, tiny_model_dir: Path, tiny_beir: Path) -> None:
    recorder = Recorder()
    _run(tmp_path, tiny_model_dir, tiny_beir, {"pretrain": 0, "finetune": 3}, NeverCalled(), [recorder])
    assert [stage for stage, _, _ in recorder.rows] == ["finetune"] * 3


def test_plan_errors() -> None:
    assert stage_plan({"pretrain": 0, "finetune": 5}) == [("finetune", 5)]
    with pytest.raises(ConfigError, match="finetune must be > 0"):
        stage_plan({"pretrain": 10, "finetune": 0})
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_plan({"distill": 10, "finetune": 1})
