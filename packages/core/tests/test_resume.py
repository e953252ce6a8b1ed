"""Exact resume: a run killed with SIGKILL mid-epoch and resumed matches the uninterrupted run bit for bit."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from keel.core.testing import RunIf
from keel.core.testing.plugin import BORING_YAML

# 64 sequences / batch 4 = 16 batches per epoch; 28 steps cross into the second epoch, and
# checkpoints every 3 steps land mid-epoch. Momentum, a step-wise LR schedule and dropout make the
# optimizer, scheduler and RNG state all matter.
RESUME_YAML = BORING_YAML.replace("max_steps: 8", "max_steps: 28").replace(
    "every_n_train_steps: 4", "every_n_train_steps: 3"
)
SLOW_CALLBACK = "callbacks:\n  - _target_: keel.core.testing.SlowDown\n    seconds: 0.25\n"


def _losses(run_dir: Path) -> dict[int, str]:
    """train/loss per step as the exact text Lightning's CSV logger wrote (repr of the float)."""
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}


def _keel(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keel.core", "run", *args], env=env, **kwargs)


def _only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@RunIf(linux=True)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    config = tmp_path / "resume.yaml"
    config.write_text(RESUME_YAML)
    slow = tmp_path / "resume_slow.yaml"
    slow.write_text(RESUME_YAML + SLOW_CALLBACK)
    env = {**os.environ, "KEEL_RUNS_DIR": str(tmp_path / "runs"), "CI": "1"}
    env.pop("KEEL_RUN_DIR", None)

    full = _keel([str(config)], env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-2000:]
    reference = _losses(_only_run(tmp_path / "runs" / "resume"))
    assert sorted(reference) == list(range(28))

    # The same run, slowed down, killed right after its second periodic checkpoint (step 6, mid-epoch).
    killed = _keel([str(slow)], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow_root = tmp_path / "runs" / "resume_slow"
    deadline = time.time() + 240
    while time.time() < deadline and not list(slow_root.glob("*/checkpoints/step=000006.ckpt")):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted = _only_run(slow_root)
    last = interrupted / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    resumed_step = state["global_step"]
    # last.ckpt is written right after step=000006.ckpt, so a kill in between leaves the step-3 one: both are mid-epoch
    assert 0 < resumed_step < 16, (
        f"the checkpoint must be mid-epoch for this test to mean anything (step {resumed_step})"
    )

    resumed = _keel(
        [str(slow), f"resume={interrupted}", "callbacks=[]"], env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    new_runs = [p for p in slow_root.iterdir() if p != interrupted]
    assert len(new_runs) == 1
    after = _losses(new_runs[0])
    assert sorted(after) == list(range(resumed_step, 28))
    mismatched = {step: (after[step], reference[step]) for step in after if after[step] != reference[step]}
    assert not mismatched, f"resumed losses differ from the uninterrupted run: {mismatched}"


def test_resume_last_finds_the_latest_run(tmp_path: Path, runs_dir: Path) -> None:
    from keel.core.checkpoint import latest_run

    for name in ("20260101-000000", "20260102-000000", "20260103-000000"):
        (runs_dir / "exp" / name / "checkpoints").mkdir(parents=True)
    (runs_dir / "exp" / "20260102-000000" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert latest_run(runs_dir, "exp") == runs_dir / "exp" / "20260102-000000"
    assert latest_run(runs_dir, "missing") is None


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-v"])
