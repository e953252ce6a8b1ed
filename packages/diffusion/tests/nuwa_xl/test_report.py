from __future__ import annotations

import json
from pathlib import Path

from keel.core.sweep import RunRecord
from keel.diffusion.nuwa_xl.report import nuwa_table


def _record(seed: int, run_dir: Path, parallel_seconds: float) -> RunRecord:
    metrics = {"test/frames": 1024.0, "test/loop_ratio": 31.0, "test/time_reduction": 1 - parallel_seconds / 40.0}
    for method, loops, seconds, fd in (
        ("parallel", 3, parallel_seconds, 2.0 + seed),
        ("autoregressive", 93, 40.0, 9.0 + seed),
    ):
        metrics.update(
            {
                f"test/{method}_loops": loops,
                f"test/{method}_clips": 100.0,
                f"test/{method}_seconds": seconds,
                f"test/{method}_cpu_seconds": seconds,
                f"test/{method}_fd": fd,
            }
        )
    for method in ("real", "parallel", "autoregressive"):
        metrics.update(
            {
                f"test/{method}_{key}": 0.5
                for key in (
                    "precision",
                    "recall",
                    "identity_accuracy",
                    "identity_consistency",
                    "identity_drift",
                    "acceleration",
                    "boundary_ratio",
                )
            }
        )
    return RunRecord("nuwa_xl", {}, seed, str(run_dir), {"metrics": metrics})


def test_table_is_computed_from_the_runs(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    records = [_record(seed, tmp_path, seconds) for seed, seconds in enumerate((20.0, 30.0, 10.0))]
    text = nuwa_table(records, tmp_path, tmp_path / "sweep-1", "keel sweep diffusion/nuwa_xl --profile cpu")
    assert "old" not in readme.read_text()
    assert text in readme.read_text()
    assert "| NUWA-XL (parallel) | 3 ± 0 | 100 ± 0 | 20.0 ± 10.0 |" in text
    assert "**50.0 ± 25.0%** less" in text  # time reductions 50%, 25%, 75%
    assert "31x fewer" in text
    assert "smaller gain than the paper" in text
    assert "NUWA-XL's frames are closer to real ones on every seed" in text
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["parallel"]["fd"]["seeds"] == [2.0, 3.0, 4.0]
    assert summary["headline"].startswith("1024 frames: 3 vs 93 sequential loops, 50% less time")
    assert (tmp_path / "results.png").is_file()
    assert "not measurable at this scale" not in text


def test_unrecognisable_frames_are_called_out(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("<!-- results:start -->\n<!-- results:end -->\n")
    records = [_record(seed, tmp_path, 20.0) for seed in range(3)]
    for record in records:
        record.summary["metrics"]["test/parallel_precision"] = 0.0
        record.summary["metrics"]["test/autoregressive_precision"] = 0.01
    text = nuwa_table(records, tmp_path, tmp_path / "sweep-1", "keel sweep diffusion/nuwa_xl --profile cpu")
    assert "not measurable at this scale" in text
