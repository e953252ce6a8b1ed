"""Ranking metrics with ir_measures: MRR@10, nDCG@10 and R@100, averaged over every judged query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from keel.retrieval._optional import require

#: Report name -> ir_measures measure name (MRR@10 is ir_measures' RR with cutoff 10).
MEASURES = {"MRR@10": "RR@10", "nDCG@10": "nDCG@10", "R@100": "R@100"}

Run = dict[str, dict[str, float]]


def run_from_search(query_ids: Sequence[str], passage_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray) -> Run:
    """A run (query id -> passage id -> score) from search results (row -1 = no result)."""
    run: Run = {}
    for qid, score_row, id_row in zip(query_ids, scores, rows, strict=True):
        run[qid] = {passage_ids[int(r)]: float(s) for s, r in zip(score_row, id_row, strict=True) if r >= 0}
    return run


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Run) -> dict[str, float]:
    """MRR@10, nDCG@10 and R@100 of ``run``, the mean over every query of ``qrels`` with a relevant passage.

    A judged query the run does not answer counts as 0 (trec_eval's ``-c``), so a system cannot gain
    by returning nothing for hard queries.
    """
    ir_measures = require("ir_measures")
    measures = {name: ir_measures.parse_measure(spec) for name, spec in MEASURES.items()}
    judged = {qid: dict(j) for qid, j in qrels.items() if any(score > 0 for score in j.values())}
    totals = dict.fromkeys(MEASURES, 0.0)
    by_measure = {str(m): name for name, m in measures.items()}
    for metric in ir_measures.iter_calc(list(measures.values()), judged, {q: run.get(q, {}) for q in judged}):
        totals[by_measure[str(metric.measure)]] += metric.value
    return {name: total / max(len(judged), 1) for name, total in totals.items()}
