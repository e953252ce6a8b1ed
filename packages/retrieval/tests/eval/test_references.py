"""Reference rows of a retrieval sweep: BM25 on the runs' judged pool, written under the arms' table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.sweep import RunRecord
from keel.retrieval.data import read_beir
from keel.retrieval.eval.references import arm_comparison_with_references, reference_metrics

pytest.importorskip("bm25s")
pytest.importorskip("ir_measures")


def test_bm25_ranks_the_test_pool(tiny_beir: Path) -> None:
    metrics = reference_metrics("bm25", read_beir(tiny_beir), "test")
    # each test query names its passage's distinctive words, and the pool is the 3 test passages
    assert metrics == {"pool_mrr@10": 1.0, "pool_ndcg@10": 1.0, "pool_recall@100": 1.0}


def test_reference_rows_follow_the_arms_table(tiny_beir: Path, tmp_path: Path) -> None:
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "README.md").write_text("# x\n\n<!-- results:start -->\nNot run yet.\n<!-- results:end -->\n")
    records = []
    for arm, scores in (("plain", [0.2, 0.3]), ("method", [0.5, 0.6])):
        for seed, score in enumerate(scores):
            run_dir = tmp_path / f"{arm}-{seed}"
            run_dir.mkdir()
            (run_dir / "resolved.yaml").write_text(f"data:\n  data_dir: {tiny_beir}\n")
            summary = {"metrics": {"test/pool_mrr@10": score, "test/pool_ndcg@10": score, "test/pool_recall@100": 1.0}}
            records.append(RunRecord(arm, {}, seed, str(run_dir), summary))
    text = arm_comparison_with_references(
        records, experiment, tmp_path / "sweep-x", "keel sweep x", baseline_arm="plain", data_dir_key="data.data_dir",
        references=["bm25"],
    )  # fmt: skip
    readme = (experiment / "README.md").read_text()
    assert text in readme
    assert "| method | 2 | 0.5500" in readme
    assert "| BM25 | 1.0000 | 1.0000 | 1.0000 |" in readme
    assert readme.index("| method |") < readme.index("| BM25 |")
    saved = json.loads((experiment / "results.json").read_text())
    assert saved["references"]["systems"]["bm25"]["pool_mrr@10"] == 1.0
