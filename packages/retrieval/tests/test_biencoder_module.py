"""BiEncoderModule on the DataModule: training lowers the loss, metrics per stage, the checkpoint round trip."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from keel.core.errors import CheckpointError
from keel.retrieval.biencoder import BiEncoderModule, load_biencoder
from keel.retrieval.data import RetrievalDataModule
from keel.retrieval.nn import biencoder_from_pretrained


def _trainer(tmp_path: Path, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip


def test_training_lowers_the_loss_and_logs_every_stage(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = biencoder_from_pretrained(str(tiny_model_dir), learn_temperature=True)
    module = BiEncoderModule(model, functools.partial(torch.optim.AdamW, lr=3e-3))
    # validation on the training queries: 30 steps on 4 queries should nearly memorise them
    data = RetrievalDataModule(str(tiny_beir), str(tiny_model_dir), negatives=1, batch_size=4, val_split="train")
    before = _trainer(tmp_path, 0).validate(module, datamodule=data, verbose=False)[0]
    trainer = _trainer(tmp_path, 30)
    trainer.fit(module, datamodule=data)
    assert "train/loss" in trainer.callback_metrics
    assert "train/temperature" in trainer.callback_metrics
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    assert after["val/loss"] < 0.5 * before["val/loss"], (before, after)
    assert after["val/mrr@10"] == 1.0
    assert set(test) == {"test/loss", "test/mrr@10", "test/accuracy"}
    assert 0 <= test["test/accuracy"] <= test["test/mrr@10"] <= 1


def test_checkpoint_rebuilds_the_encoder_with_weights_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = biencoder_from_pretrained(str(tiny_model_dir), shared=False, pooling="cls", learn_temperature=True)
    with torch.no_grad():  # make the passage tower differ from its starting copy
        model.passage_encoder.embeddings.word_embeddings.weight.mul_(1.5)
    module = BiEncoderModule(model, functools.partial(torch.optim.SGD, lr=0.1))
    trainer = _trainer(tmp_path, 0)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_biencoder(str(path))
    ids = torch.tensor([[101, 7592, 2088, 102]])
    mask = torch.ones_like(ids)
    model.eval()
    for tower in ("query", "passage"):
        torch.testing.assert_close(loaded.encode(ids, mask, tower), model.encode(ids, mask, tower))
    assert loaded.tokenizer_json == model.tokenizer_json
    assert loaded.pooling == "cls"


def test_bad_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_biencoder(str(tmp_path / "missing.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_biencoder(str(tmp_path / "junk.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a BiEncoderModule checkpoint"):
        load_biencoder(str(tmp_path / "other.ckpt"))
