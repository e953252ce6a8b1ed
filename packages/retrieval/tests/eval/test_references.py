"""Reference rows of a retrieval sweep: BM25 on the runs' judged pool, written under the arms' table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.sweep import RunRecord
from keel.retrieval.data import read_beir
from keel.retrieval.eval.references import arm_comparison_with_references, reference_metrics, reference_verdicts

pytest.importorskip("bm25s")
pytest.importorskip("ir_measures")


def test_bm25_ranks_the_test_pool(tiny_beir: Path) -> None:
    metrics = reference_metrics("bm25", read_beir(tiny_beir), "test")
    # each test query names its passage's distinctive words, and the pool is the 3 test passages
    assert metrics == {"pool_mrr@10": 1.0, "pool_ndcg@10": 1.0, "pool_recall@100": 1.0}


def _two_arm_runs(data_dir: Path, tmp_path: Path) -> list[RunRecord]:
    """Two seeds each of ``plain`` (0.2, 0.3) and ``method`` (0.5, 0.6), run on ``data_dir``."""
    records = []
    for arm, scores in (("plain", [0.2, 0.3]), ("method", [0.5, 0.6])):
        for seed, score in enumerate(scores):
            run_dir = tmp_path / f"{arm}-{seed}"
            run_dir.mkdir()
            (run_dir / "resolved.yaml").write_text(f"data:\n  data_dir: {data_dir}\n")
            summary = {"metrics": {"test/pool_mrr@10": score, "test/pool_ndcg@10": score, "test/pool_recall@100": 1.0}}
            records.append(RunRecord(arm, {}, seed, str(run_dir), summary))
    return records


def test_reference_rows_follow_the_arms_table(tiny_beir: Path, tmp_path: Path) -> None:
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "README.md").write_text("# x\n\n<!-- results:start -->\nNot run yet.\n<!-- results:end -->\n")
    records = _two_arm_runs(tiny_beir, tmp_path)
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
    assert "- BM25 still wins: it beats every seed of the best arm, method (pool_mrr@10 0.5500 vs 1.0000" in readme


def test_reference_verdicts_say_who_wins_by_seed() -> None:
    records = [RunRecord("a", {}, s, "", {"metrics": {"test/pool_mrr@10": v}}) for s, v in enumerate([0.4, 0.5])]
    records += [RunRecord("b", {}, s, "", {"metrics": {"test/pool_mrr@10": v}}) for s, v in enumerate([0.6, 0.7])]
    lines = reference_verdicts(records, {"bm25": {"pool_mrr@10": 0.55}, "x": {"pool_mrr@10": 0.66}}, "pool_mrr@10")
    assert lines[0] == "- every seed of the best arm, b, beats BM25 (pool_mrr@10 0.6500 vs 0.5500, +0.1000)."
    assert lines[1] == "- the best arm, b, and x overlap (pool_mrr@10 0.6500 vs 0.6600, -0.0100)."


def test_a_named_block_keeps_its_own_table_figure_and_json(tiny_beir: Path, tmp_path: Path) -> None:
    # a second corpus's profile writes results:BLOCK and results-BLOCK.*, leaving the main block alone
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    main = "<!-- results:start -->\nthe first corpus\n<!-- results:end -->\n"
    second_block = "<!-- results:second:start -->\n<!-- results:second:end -->\n"
    (experiment / "README.md").write_text(f"# x\n\n{main}\n{second_block}")
    records = _two_arm_runs(tiny_beir, tmp_path)
    arm_comparison_with_references(
        records, experiment, tmp_path / "sweep-x", "keel sweep x", baseline_arm="plain", data_dir_key="data.data_dir",
        references=["bm25"], block="second",
    )  # fmt: skip
    readme = (experiment / "README.md").read_text()
    assert main in readme
    second = readme[readme.index("<!-- results:second:start -->") :]
    assert "| method | 2 | 0.5500" in second
    assert "| BM25 | 1.0000" in second
    assert "![test pool_mrr@10 per arm](results-second.png)" in second
    assert (experiment / "results-second.png").is_file()
    assert not (experiment / "results.png").exists()
    saved = json.loads((experiment / "results-second.json").read_text())
    assert saved["arms"]["method"]["test"]["mean"] == pytest.approx(0.55)
    assert saved["references"]["systems"]["bm25"]["pool_mrr@10"] == 1.0
    assert not (experiment / "results.json").exists()


def test_metrics_only_the_arms_log_stay_out_of_the_reference_table(tiny_beir: Path, tmp_path: Path) -> None:
    # CAPSTONE's arms also log alone_pool_* (each passage scored alone); BM25 has no such variant
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "README.md").write_text("# x\n\n<!-- results:start -->\n<!-- results:end -->\n")
    records = _two_arm_runs(tiny_beir, tmp_path)
    for record in records:
        record.summary["metrics"]["test/alone_pool_mrr@10"] = 0.1
    arm_comparison_with_references(
        records, experiment, tmp_path / "sweep-x", "keel sweep x", baseline_arm="plain", data_dir_key="data.data_dir",
        references=["bm25"], metrics=["pool_mrr@10", "alone_pool_mrr@10"],
    )  # fmt: skip
    readme = (experiment / "README.md").read_text()
    assert "| arm | seeds | test pool_mrr@10 | test alone_pool_mrr@10 |" in readme
    assert "| method | 2 | 0.5500 ± 0.0707 | 0.1000 ± 0.0000 |" in readme
    assert "| system | test pool_mrr@10 |\n" in readme
    assert "| BM25 | 1.0000 |\n" in readme
