"""Tests of the metrics plots and the loss-curve callback."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from keel.core.errors import DataError
from keel.core.plotting import LossCurveCallback, plot_metrics, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# What CSVLogger writes: one row per logging call, only that call's columns filled.
METRICS_CSV = """epoch,step,train/loss,train/ppl,val/loss,val/ppl
0,0,6.0,403.4,,
0,1,5.5,244.7,,
0,2,5.1,164.0,,
0,2,,,5.3,200.3
0,3,4.8,121.5,,
0,4,4.2,66.7,,
0,4,,,4.6,99.5
"""


def test_read_metrics_skips_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    series = read_metrics(path, ["train/loss", "val/loss", "absent"])
    assert series == {"train/loss": ([0, 1, 2, 3, 4], [6.0, 5.5, 5.1, 4.8, 4.2]), "val/loss": ([2, 4], [5.3, 4.6])}


def test_plot_metrics_writes_png(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    out = plot_metrics(path, tmp_path / "plots" / "loss.png", title="tiny run", log_y=True)
    data = out.read_bytes()
    assert out == tmp_path / "plots" / "loss.png"
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed away


def test_plot_metrics_rejects_files_without_the_keys(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    with pytest.raises(DataError, match="no values"):
        plot_metrics(path, tmp_path / "x.png", keys=["test/loss"])
    with pytest.raises(DataError, match="no metrics file"):
        plot_metrics(tmp_path / "missing.csv", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_loss_curve_callback_writes_plot(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = DataLoader(list(zip(x, x.sum(1, keepdim=True), strict=True)), batch_size=8)
    trainer = L.Trainer(
        max_steps=16,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[LossCurveCallback()],
        log_every_n_steps=1,
        val_check_interval=8,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Regression(), train_dataloaders=data, val_dataloaders=data)
    assert (tmp_path / "loss_curve.png").read_bytes().startswith(PNG_MAGIC)
    series = read_metrics(tmp_path / "csv" / "version_0" / "metrics.csv", ["train/loss", "val/loss"])
    assert len(series["train/loss"][0]) == 16
    assert len(series["val/loss"][0]) == 2


def test_loss_curve_callback_without_csv_logger_only_warns(tmp_path):
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no CSVLogger"):
        LossCurveCallback().on_fit_end(trainer, _Regression())
    assert not (tmp_path / "loss_curve.png").exists()
