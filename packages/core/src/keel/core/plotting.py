"""Plots of training curves from Lightning's ``CSVLogger`` output.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so plotting
never opens a window, needs no display, and leaves pyplot's global backend alone.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from keel.core.errors import DataError

DEFAULT_KEYS = ("train/loss", "val/loss")


def read_metrics(metrics_csv: Path, keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Read the ``(steps, values)`` series of some columns of a ``CSVLogger`` ``metrics.csv``.

    Lightning writes one row per logging call with only that call's columns filled, so every
    column is sparse; empty cells are skipped. A key that is missing falls back to the
    ``_step`` / ``_epoch`` column Lightning makes when a value is logged both ways.

    Args:
        metrics_csv: Path of the ``metrics.csv`` file.
        keys: Metric names to read.

    Returns:
        For each key found, the column actually read mapped to its steps and values, in file order.

    Raises:
        DataError: The file is missing or has no ``step`` column.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise DataError(f"no metrics file at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "step" not in columns:
        raise DataError(f"{path} has no 'step' column; is it a Lightning CSVLogger metrics.csv?")
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key in keys:
        column = next((c for c in (key, f"{key}_step", f"{key}_epoch") if c in columns), None)
        if column is None:
            continue
        steps, values = [], []
        for row in rows:
            cell, step = row.get(column), row.get("step")
            if cell and step:
                steps.append(int(float(step)))
                values.append(float(cell))
        if steps:
            series[column] = (steps, values)
    return series


def plot_metrics(
    metrics_csv: Path,
    out_png: Path,
    keys: Sequence[str] = DEFAULT_KEYS,
    title: str | None = None,
    log_y: bool = False,
) -> Path:
    """Plot metric curves from a ``CSVLogger`` ``metrics.csv`` against the optimizer step.

    Short series (e.g. a few validation runs) get markers, so a single point stays visible.
    The PNG is written to a temporary file and renamed, so a reader never sees a half-written image.

    Args:
        metrics_csv: Path of the ``metrics.csv`` file.
        out_png: Where to write the figure; parent folders are created.
        keys: Metric columns to plot, one curve each.
        title: Figure title; defaults to the name of the run directory holding ``metrics_csv``.
        log_y: Use a logarithmic y axis (only if every value is positive).

    Returns:
        ``out_png``.

    Raises:
        DataError: The file is missing, is not a metrics file, or holds none of ``keys``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = read_metrics(metrics_csv, keys)
    if not series:
        raise DataError(f"{metrics_csv} has no values for any of {', '.join(keys)}")

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for column, (steps, values) in series.items():
        # Markers on sparse series (validation runs) show where the measurements are.
        ax.plot(steps, values, label=column, marker="o" if len(steps) <= 20 else None, markersize=3)
    all_values = [v for _, values in series.values() for v in values]
    if log_y and all(v > 0 and math.isfinite(v) for v in all_values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    names = {column.split("/")[-1].removesuffix("_step").removesuffix("_epoch") for column in series}
    ax.set_ylabel(names.pop() if len(names) == 1 else "value")
    ax.set_title(title if title is not None else Path(metrics_csv).resolve().parent.name)
    ax.grid(True, alpha=0.3)
    ax.legend()

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, out)
    return out


class LossCurveCallback(L.Callback):
    """At the end of ``fit``, plot the run's loss curves into ``<default_root_dir>/loss_curve.png``.

    Reads what the trainer's :class:`~lightning.pytorch.loggers.CSVLogger` wrote (flushing it first),
    so the trainer needs one among its loggers; without one the callback warns and does nothing.

    Args:
        keys: Metric columns to plot.
        filename: Name of the image in ``trainer.default_root_dir``.
        log_y: Use a logarithmic y axis.
    """

    def __init__(self, keys: Sequence[str] = DEFAULT_KEYS, filename: str = "loss_curve.png", log_y: bool = False):
        self.keys = tuple(keys)
        self.filename = filename
        self.log_y = log_y

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Flush the CSV logger and write the plot on global rank 0."""
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import CSVLogger

        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            rank_zero_warn("LossCurveCallback found no CSVLogger among the trainer's loggers; no loss curve written")
            return
        logger.save()
        metrics_csv = Path(logger.experiment.metrics_file_path)
        out_png = Path(trainer.default_root_dir) / self.filename
        try:
            plot_metrics(metrics_csv, out_png, self.keys, title=Path(trainer.default_root_dir).name, log_y=self.log_y)
        except DataError as err:
            # A run that logged none of the keys should still finish cleanly; the plot is a by-product.
            rank_zero_warn(f"LossCurveCallback wrote no plot: {err}")
