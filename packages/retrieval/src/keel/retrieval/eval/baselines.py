"""The zero-shot baselines of every offline corpus, scored once and written into a README block.

``keel retrieval baselines`` scores each model (BM25 and all-MiniLM-L6-v2 by default) on the test
split of each corpus folder (``<root>/<corpus>``, built with the defaults when missing) with
:func:`keel.retrieval.eval.evaluate.evaluate`, exactly as ``keel retrieval evaluate`` does. Each score
is kept as JSON in ``<folder>/baselines/`` next to the data it belongs to, so a second call only
re-renders the table; ``--rescore`` computes them again. The table replaces the README block
``<!-- results:zeroshot:start -->`` ... ``<!-- results:zeroshot:end -->``, so no figure in it is
typed by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from keel.retrieval.eval.encoders import MINILM

#: The models the README's zero-shot table compares.
DEFAULT_MODELS = ("bm25", MINILM)
METRICS = ("MRR@10", "nDCG@10", "R@100")


@dataclass
class BaselineScore:
    """One model's metrics on one split of one corpus folder, and what it took."""

    corpus: str
    model: str
    split: str
    metrics: dict[str, float]
    queries: int
    passages: int
    seconds: float
    facts: dict[str, Any]  # keel.core.testing.timing.run_facts when it was scored: cores, threads, load


def score_file(folder: Path, model: str, split: str) -> Path:
    """Where the score of ``model`` on ``split`` of ``folder`` is kept."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return folder / "baselines" / f"{slug}-{split}.json"


def baseline_score(corpus: str, folder: Path, model: str, split: str = "test", rescore: bool = False) -> BaselineScore:
    """The kept score of ``model`` on ``folder``, computed (and kept) when there is none or on ``rescore``.

    A kept file of another format (an older keel's) is scored again.
    """
    from keel.core.testing.timing import run_facts
    from keel.retrieval.eval.evaluate import evaluate

    path = score_file(folder, model, split)
    if path.is_file() and not rescore:
        kept = json.loads(path.read_text())
        if set(kept) == {f.name for f in fields(BaselineScore)}:
            return BaselineScore(**kept)
    facts = run_facts("cpu")  # before scoring: the load average is the machine's other work
    start = time.perf_counter()
    result = evaluate(model, str(folder), split)
    score = BaselineScore(
        corpus, model, split, result.metrics, result.queries, result.passages, time.perf_counter() - start, facts
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(score), indent=2) + "\n")
    return score


def model_name(model: str) -> str:
    """The table's name for a model argument."""
    return {"bm25": "BM25", MINILM: "all-MiniLM-L6-v2"}.get(model, model)


def baselines_table(scores: Sequence[BaselineScore]) -> str:
    """The Markdown table of ``scores``, one row per (corpus, model), with how long each took."""

    def spread(key: str) -> str:
        values = sorted({s.facts[key] for s in scores})
        return "/".join(map(str, values))

    loads = [s.facts["load_average"] for s in scores]
    lines = [
        f"Produced by `keel retrieval baselines` ({scores[0].split} split) on CPU: {spread('cpu_cores')} cores, "
        f"{spread('threads')} torch thread(s), load average {min(loads):.1f} to {max(loads):.1f} when scoring:",
        "",
        "| corpus | passages | queries | model | " + " | ".join(METRICS) + " | minutes |",
        "|---|---:|---:|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for s in scores:
        values = " | ".join(f"{s.metrics[m]:.4f}" for m in METRICS)
        lines.append(
            f"| {s.corpus} | {s.passages:,} | {s.queries:,} | {model_name(s.model)} | {values} | {s.seconds / 60:.1f} |"
        )
    return "\n".join(lines)
