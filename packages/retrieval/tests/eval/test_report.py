"""The sweep analysis: means over seeds, differences from the baseline, shares of the reference, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from keel.core.sweep import RunRecord
from keel.retrieval.eval.report import arm_comparison


def _record(arm: str, seed: int, score: float, zero: float) -> RunRecord:
    metrics = {"test/pool_mrr@10": score, "zeroshot/pool_mrr@10": zero}
    return RunRecord(arm, {}, seed, f"runs/{arm}-{seed}", {"metrics": metrics})


def test_table_and_verdicts(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# x\n<!-- results:start -->\nNot run yet.\n<!-- results:end -->\n")
    records = [
        *(_record("teacher", s, 0.50, 0.40) for s in range(3)),
        *(_record("lead", s, v, 0.2) for s, v in enumerate([0.31, 0.33, 0.32])),
        *(_record("final_kd", s, v, 0.2) for s, v in enumerate([0.30, 0.34, 0.29])),
        *(_record("student", s, v, 0.2) for s, v in enumerate([0.20, 0.22, 0.21])),
    ]
    text = arm_comparison(
        records, tmp_path, tmp_path / "sweep-1", "keel sweep x", "student", "teacher", [["lead", "final_kd"]],
        metrics=["pool_mrr@10"],
    )  # fmt: skip
    assert "| lead | 3 | 0.3200 ± 0.0100 | 0.2000 ± 0.0000 | +0.1100 | 64.0% |" in text
    assert "- lead vs student: +0.1100 pool_mrr@10 (every lead seed above every student seed)." in text
    assert "- lead vs final_kd: +0.0100 pool_mrr@10 (seeds overlap)." in text
    assert "teacher vs student" not in text, "the reference is not a contender"
    assert "Not run yet" not in (tmp_path / "README.md").read_text()
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["arms"]["student"]["test"]["mean"] == 0.21
    assert (tmp_path / "results.png").is_file()
