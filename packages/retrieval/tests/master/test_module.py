"""MasterModule on MasterDataModule: the plan's stages, per-stage learning rates, and the exported encoder."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from keel.core.distill.module import pretrained
from keel.retrieval.biencoder import load_biencoder
from keel.retrieval.data import RetrievalDataModule
from keel.retrieval.master import (
    BottleneckedAutoencoder,
    MasterDataModule,
    MasterModule,
    biencoder_from_checkpoint,
    export_encoder,
)

THREE = ["keywords", "neighbour", "complementary"]


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.rates: list[list[float]] = []
        self.pretrain_losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stages.append(batch["stage"])
        self.rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch["stage"] == "pretrain":
            self.pretrain_losses.append(float(outputs["loss"]))


def test_the_plan_pretrains_then_finetunes(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BottleneckedAutoencoder(pretrained(str(tiny_model_dir)), THREE, 1, tokenizer=str(tiny_model_dir))
    steps = {"pretrain": 15, "finetune": 5}
    module = MasterModule(
        model, steps, functools.partial(torch.optim.AdamW, lr=1.0), {"pretrain": 3e-3, "finetune": 1e-3}
    )
    retrieval = RetrievalDataModule(str(tiny_beir), str(tiny_model_dir), negatives=1, batch_size=2, eval_batch_size=4)
    data = MasterDataModule(retrieval, steps, THREE, max_length=48, batch_size=4)
    recorder = Recorder()
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[recorder])
    trainer.fit(module, datamodule=data)

    assert recorder.stages == ["pretrain"] * 15 + ["finetune"] * 5
    encoder_rates, head_rates = zip(*recorder.rates, strict=True)  # two groups: no learned temperature
    assert all(r > 0 for r in encoder_rates)
    assert all(r > 0 for r in head_rates[:15])
    assert all(r == 0 for r in head_rates[15:])
    assert max(encoder_rates[:15]) == pytest.approx(3e-3)
    assert max(encoder_rates[15:]) == pytest.approx(1e-3)
    first, last = recorder.pretrain_losses[:3], recorder.pretrain_losses[-3:]
    assert sum(last) < sum(first), recorder.pretrain_losses
    # entering fine-tuning cleared Adam's moments: the encoder counts only its fine-tuning steps, and
    # the decoders, which no longer train, hold no state
    state = trainer.optimizers[0].state
    assert int(state[next(model.encoder.parameters())]["step"]) == 5
    assert next(model.decoders.parameters()) not in state
    metrics = trainer.callback_metrics
    logged = {"zeroshot/pool_mrr@10", "train/pretrain_keywords", "train/pretrain_complementary_encoder_mlm"}
    assert logged | {"train/bottleneck_cosine"} <= set(metrics)
    assert -1.0 <= float(metrics["train/bottleneck_cosine"]) <= 1.0
    assert {"train/loss", "val/loss"} <= set(metrics)


def test_checkpoint_loads_as_a_biencoder_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    model = BottleneckedAutoencoder(pretrained(str(tiny_model_dir)), THREE, 1, tokenizer=str(tiny_model_dir))
    module = MasterModule(model, {"pretrain": 1}, functools.partial(torch.optim.SGD, lr=0.1), {"pretrain": 0.1})
    with torch.no_grad():  # make the encoder differ from the folder's weights
        model.encoder.embeddings.word_embeddings.weight.mul_(1.5)
    trainer = _trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(module)
    path = tmp_path / "master.ckpt"
    trainer.save_checkpoint(path)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    mask = torch.ones_like(ids)
    module.model.eval()
    expected = module.model.encode(ids, mask)
    loaded = load_biencoder(str(path))
    torch.testing.assert_close(loaded.encode(ids, mask), expected)
    assert (loaded.pooling, loaded.tokenizer_json) == ("cls", model.tokenizer_json)
    fresh = biencoder_from_checkpoint(str(path), pooling="mean", temperature=0.1)
    assert (fresh.training, fresh.pooling) == (True, "mean")
    assert float(fresh.temperature) == pytest.approx(0.1)
    folder = export_encoder(str(path), tmp_path / "exported")
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    hf = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    hidden = hf(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(torch.nn.functional.normalize(hidden, dim=-1), expected)
