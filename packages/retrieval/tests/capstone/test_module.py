"""CapstoneModule trains each step on that step's curriculum part and ranks the pool alone and multi-view."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from keel.core.errors import ConfigError
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.capstone import CapstoneDataModule, CapstoneModule
from keel.retrieval.capstone.multiview import multi_view_pool_ranking
from keel.retrieval.nn import biencoder_from_pretrained


def three_views(passages):
    """Three distinct pseudo queries per passage, so every part expands differently."""
    return [[f"{p.title} first", "second view words", "third view words here"] for p in passages]


class BatchRecorder(L.Callback):
    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)


def test_each_step_trains_on_its_part(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[tuple[int, torch.Tensor]] = []
    parent = BiEncoderModule.forward_loss

    def spy(self, batch):
        if self.training:
            used.append((self.global_step, batch["passage_input_ids"]))
        return parent(self, batch)

    monkeypatch.setattr(BiEncoderModule, "forward_loss", spy)
    torch.manual_seed(0)
    model = biencoder_from_pretrained(str(tiny_model_dir))
    module = CapstoneModule(model, functools.partial(torch.optim.AdamW, lr=1e-3), total_steps=6, parts=3, views=2)
    data = CapstoneDataModule(
        expander=three_views, data_dir=str(tiny_beir), tokenizer=str(tiny_model_dir),
        negatives=1, batch_size=2, eval_batch_size=4, passage_max_length=32, expansion_max_length=8,
    )  # fmt: skip
    recorder = BatchRecorder()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)

    assert [step for step, _ in used] == list(range(6))
    for (step, chosen), batch in zip(used, recorder.batches, strict=True):
        part = [3, 3, 2, 2, 1, 1][step]
        views = batch["passage_input_ids"]
        assert views.dim() == 3
        assert not torch.equal(views[0], views[1])
        assert not torch.equal(views[1], views[2])
        assert torch.equal(chosen, batch["passage_input_ids"][part - 1])
    metrics = trainer.callback_metrics
    assert {"test/pool_mrr@10", "test/pool_ndcg@10", "test/pool_recall@100"} <= set(metrics)
    # the curriculum arm infers through its views: its test/pool_* are those of the views
    views = multi_view_pool_ranking(
        model, data.data, "test", data.expansions, views=2, query_max_length=data.query_max_length,
        passage_max_length=data.passage_max_length, expansion_max_length=data.expansion_max_length,
    )  # fmt: skip
    for name in ("pool_mrr@10", "pool_ndcg@10", "pool_recall@100"):
        assert float(metrics[f"test/{name}"]) == pytest.approx(views[name], abs=1e-6)


@pytest.mark.parametrize(("curriculum", "own"), [("none", "alone"), ("gradual", "views"), ("gold", "views")])
def test_every_arm_is_scored_alone_and_through_views(
    curriculum: str, own: str, tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test/pool_* is the arm's own inference; test/alone_* and test/views_* are both modes, for every arm."""
    calls: list[dict] = []

    def ranking(model, data, split, expansions, **settings):
        calls.append(dict(expansions))
        mrr = 0.25 if expansions else 0.75  # tells the two modes apart in the logged metrics
        return {"pool_mrr@10": mrr, "pool_ndcg@10": mrr, "pool_recall@100": mrr}

    monkeypatch.setattr("keel.retrieval.capstone.module.multi_view_pool_ranking", ranking)
    model = biencoder_from_pretrained(str(tiny_model_dir))
    module = CapstoneModule(
        model, functools.partial(torch.optim.AdamW, lr=1e-3), total_steps=2, curriculum=curriculum, views=2,
        zero_shot=False,
    )  # fmt: skip
    data = CapstoneDataModule(
        expander=three_views, curriculum=curriculum, data_dir=str(tiny_beir), tokenizer=str(tiny_model_dir),
        negatives=1, batch_size=2, eval_batch_size=4, passage_max_length=32, expansion_max_length=8,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    metrics = trainer.callback_metrics
    assert float(metrics["test/alone_pool_mrr@10"]) == 0.75
    assert float(metrics["test/views_pool_mrr@10"]) == 0.25
    assert float(metrics["test/pool_mrr@10"]) == {"alone": 0.75, "views": 0.25}[own]
    # the views are the datamodule's pseudo queries, made for the plain arm too
    assert sorted(map(bool, calls)) == [False, True]
    assert next(c for c in calls if c) == data.expansions


def test_settings_are_checked() -> None:
    model = torch.nn.Linear(1, 1)
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ConfigError, match="total_steps"):
        CapstoneModule(model, optimizer, total_steps=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="aggregation"):
        CapstoneModule(model, optimizer, total_steps=5, aggregation="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="curriculum"):
        CapstoneModule(model, optimizer, total_steps=5, curriculum="reverse")  # type: ignore[arg-type]
