"""keel's pytest plugin: markers, ``--runslow``, and fixtures shared by every keel package.

Markers:
    slow: long tests, skipped unless ``--runslow`` or ``KEEL_RUN_SLOW=1``.
    gpu: needs a CUDA device (see :func:`keel.core.testing.RunIf`).
    distributed: starts several processes (gloo on CPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MARKERS = {
    "slow": "long test; runs with --runslow or KEEL_RUN_SLOW=1",
    "gpu": "needs a CUDA device",
    "distributed": "starts several processes (gloo on CPU)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--runslow``."""
    group = parser.getgroup("keel")
    group.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    """Register keel's markers."""
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach RunIf's category markers and skip slow tests unless asked for."""
    run_slow = config.getoption("--runslow") or os.environ.get("KEEL_RUN_SLOW") == "1"
    for item in items:
        for mark in item.iter_markers("skipif"):
            for category in mark.kwargs.get("keel_categories", ()):
                item.add_marker(getattr(pytest.mark, category))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with --runslow or KEEL_RUN_SLOW=1"))


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``KEEL_RUNS_DIR`` for the test, and no run directory inherited from a parent."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("KEEL_RUNS_DIR", str(folder))
    monkeypatch.delenv("KEEL_RUN_DIR", raising=False)
    return folder


@pytest.fixture
def boring_experiment(tmp_path: Path) -> Iterator[Path]:
    """A tiny experiment YAML (boring model and data, CPU, 8 steps) that the runtime can run in seconds."""
    path = tmp_path / "boring.yaml"
    path.write_text(BORING_YAML)
    return path


BORING_YAML = """\
description: boring model on random tokens, for runtime tests
seed: 7
model:
  _target_: keel.core.testing.BoringModule
  vocab_size: 32
  hidden: 16
data:
  _target_: keel.core.testing.BoringDataModule
  size: 64
  batch_size: 4
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 8
  log_every_n_steps: 1
  val_check_interval: 4
  deterministic: true
checkpoint:
  every_n_train_steps: 4
logging:
  tensorboard: false
  progress_bar: plain
"""
