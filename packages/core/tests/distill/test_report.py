"""The distillation sweep's analysis: means over seeds, the fraction of the teacher retained, the README block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.distill.report import retention_table
from keel.core.sweep import RunRecord


def record(arm: str, seed: int, mrr: float, zero_shot: float, tmp_path: Path) -> RunRecord:
    metrics = {"test/mrr@10": mrr, "test/recall@1": mrr / 2, "test/recall@10": min(1.0, 2 * mrr)}
    metrics["zeroshot/mrr@10"] = zero_shot
    return RunRecord(arm, {}, seed, str(tmp_path / f"{arm}-{seed}"), {"metrics": metrics})


def test_retention_table_reports_each_arms_share_of_the_teacher(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# x\n\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    records = [
        *(record("teacher", s, v, 0.3, tmp_path) for s, v in enumerate([0.38, 0.40, 0.42])),
        *(record("minilm", s, v, 0.02, tmp_path) for s, v in enumerate([0.19, 0.20, 0.21])),
        *(record("hidden_mse", s, v, 0.1, tmp_path) for s, v in enumerate([0.29, 0.30, 0.31])),
        *(record("scratch", s, v, 0.01, tmp_path) for s, v in enumerate([0.05, 0.06, 0.07])),
    ]
    text = retention_table(records, tmp_path, tmp_path / "sweep-x", "keel sweep core/minilm --profile cpu")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher_score"] == pytest.approx(0.40)
    assert results["arms"]["minilm"]["retained"]["mean"] == pytest.approx(0.5)
    assert results["arms"]["hidden_mse"]["retained"]["mean"] == pytest.approx(0.75)
    assert results["arms"]["scratch"]["finetuned"]["std"] == pytest.approx(0.01)
    assert results["arms"]["minilm"]["zero_shot"]["mean"] == pytest.approx(0.02)
    assert "| minilm | 3 | 0.2000 ± 0.0100 |" in text
    assert "50.0% ± 2.5" in text
    assert "**minilm: not reproduced at this scale**" in text
    assert "- minilm vs scratch: +0.1400 mrr@10 (every seed above every scratch seed)." in text
    assert "- minilm vs hidden_mse: -0.1000 mrr@10 (separated over seeds)." in text
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme
    assert readme.endswith("<!-- results:end -->\ntail\n")
    assert (tmp_path / "results.png").stat().st_size > 0


def test_retention_table_needs_the_teacher_arm(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("<!-- results:start -->\n<!-- results:end -->\n")
    with pytest.raises(ValueError, match="teacher arm"):
        retention_table([record("minilm", 0, 0.2, 0.0, tmp_path)], tmp_path, tmp_path, "keel sweep")
