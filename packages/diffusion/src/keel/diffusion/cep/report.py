"""The CEP experiment's analysis: sample quality of each perturbation setting against gamma = 0.

:func:`cep_table` is the ``keel sweep diffusion/cep`` analysis target. For every arm (a CEP kind and
gamma, or none) and seed it rebuilds the trained model, draws class-balanced samples with the same
noise for every arm of a seed, and scores them against the real test digits: Frechet distance,
precision and recall (quality and diversity, the paper's two axes) and class accuracy (fidelity to
the condition). The verdict compares each CEP arm with the unperturbed baseline seed by seed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.core.analysis import mean_sd
from keel.core.errors import ConfigError
from keel.core.report import replace_block
from keel.core.runner import load_trained
from keel.core.sweep import RunRecord
from keel.diffusion.eval.reference import class_balanced_labels, reference_set, sample_in_batches

METRICS = ("fd", "precision", "recall", "accuracy")


def compare(baseline: dict[int, dict[str, float]], arm: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Per-seed differences to the baseline (same seed: same data order, same sampling noise).

    Returns:
        ``fd_better_seeds`` (how many seeds have a lower FD), ``recall_better_seeds``, the mean
        differences, and the number of paired seeds.
    """
    seeds = sorted(set(baseline) & set(arm))
    fd_diff = [arm[s]["fd"] - baseline[s]["fd"] for s in seeds]
    recall_diff = [arm[s]["recall"] - baseline[s]["recall"] for s in seeds]
    return {
        "seeds": len(seeds),
        "fd_better_seeds": sum(d < 0 for d in fd_diff),
        "recall_better_seeds": sum(d > 0 for d in recall_diff),
        "fd_diff": statistics.fmean(fd_diff) if seeds else math.nan,
        "recall_diff": statistics.fmean(recall_diff) if seeds else math.nan,
    }


def plot(summary: dict[str, Any], out: Path) -> Path:
    """FD and recall of each arm (mean ± sd over seeds, seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    arms = list(summary)
    figure = Figure(figsize=(11, 4.2), dpi=110)
    for axes, metric, label in zip(
        figure.subplots(1, 2), ("fd", "recall"), ("Frechet distance", "recall"), strict=True
    ):
        means = [summary[a]["mean"][metric][0] for a in arms]
        sds = [summary[a]["mean"][metric][1] for a in arms]
        axes.bar(range(len(arms)), means, yerr=sds, capsize=4, color="tab:blue", alpha=0.7)
        for index, arm in enumerate(arms):
            values = [v[metric] for v in summary[arm]["per_seed"].values()]
            axes.scatter([index] * len(values), values, color="black", s=10, zorder=3)
        axes.set_xticks(range(len(arms)), arms, rotation=20)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle("CEP: sample quality (lower FD) and diversity (higher recall) per arm")
    figure.tight_layout()
    figure.savefig(out)
    return out


def cep_table(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    tiny: bool = False,
    baseline_arm: str = "none",
    num_samples: int = 1000,
    sampler: str = "ddim",
    steps: int = 25,
    guidance_scale: float = 1.0,
    batch_size: int = 500,
    classifier_steps: int = 1000,
    paper: str = "",
    block: str | None = None,
) -> dict[str, Any]:
    """Score every run of the sweep, compare each arm with ``baseline_arm``, write the results.

    Args:
        records: The sweep's finished runs.
        experiment_dir: The experiment folder (its README, figure and JSON are written).
        sweep_dir: The sweep folder (the digit classifiers are cached beside it).
        command: The command line quoted in the table.
        tiny: A smoke test: fewer samples, steps and classifier steps.
        baseline_arm: The gamma = 0 arm every other arm is compared with, seed by seed.
        num_samples: Class-balanced samples per run.
        sampler: The sampler (``ddim``, ...).
        steps: Sampling steps.
        guidance_scale: Classifier-free guidance scale (1: none).
        batch_size: Samples per sampling batch.
        classifier_steps: Training steps of the digit classifier whose features score the samples.
        paper: The paper's claim, quoted above the table.
        block: The README block to write (``<!-- results:BLOCK:start -->``; ``None``: the main
            ``results`` block), so each sweep profile can keep its own table; its figure and JSON are
            then ``results-BLOCK.png`` and ``results-BLOCK.json``.

    Returns:
        The summary written to ``results.json`` (``results-BLOCK.json``).
    """
    if tiny:  # the smoke test checks the pipeline, not the numbers
        num_samples, steps, classifier_steps, batch_size = min(num_samples, 40), min(steps, 4), 20, 40
    runs: dict[str, dict[int, RunRecord]] = defaultdict(dict)
    for record in records:
        runs[record.arm][record.seed] = record
    if baseline_arm not in runs:
        raise ConfigError(f"the sweep has no {baseline_arm!r} arm to compare CEP with")
    reference = reference_set(next(iter(runs[baseline_arm].values())).run_dir, sweep_dir.parent / "digit_classifiers",
                              classifier_steps)  # fmt: skip
    labels = class_balanced_labels(num_samples)
    scores: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for arm, by_seed in runs.items():
        for seed, record in sorted(by_seed.items()):
            module = load_trained(record.run_dir)
            images = sample_in_batches(module, labels, num_samples, sampler, steps, guidance_scale, seed, batch_size)
            scores[arm][seed] = reference.score(images, labels)
            print(
                f"  {arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores[arm][seed].items()), flush=True
            )
    summary = {
        arm: {
            "mean": {m: mean_sd([s[m] for s in by_seed.values()]) for m in METRICS},
            "per_seed": by_seed,
            "vs_baseline": compare(scores[baseline_arm], by_seed) if arm != baseline_arm else None,
        }
        for arm, by_seed in scores.items()
    }
    scale = "tiny (CI) scale: a smoke test, not a measurement" if tiny else "a measurement"
    lines = [
        f"Produced by `{command}` ({len(records)} runs, {scale}; sweep `{sweep_dir.name}`): {num_samples} "
        f"class-balanced samples per run, {sampler.upper()} {steps} steps, guidance {guidance_scale:g}, "
        f"scored against {reference.size} real test digits (classifier accuracy on them "
        f"{100 * reference.classifier_accuracy:.1f}%). Same sampling noise for every arm of a seed.",
    ]
    if paper:
        lines += ["", f"Paper: {paper}"]
    lines += ["", "| arm | FD | precision | recall | accuracy | FD lower than none (seeds) | recall higher (seeds) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    improved = []
    for arm, entry in summary.items():
        cells = [f"{entry['mean'][m][0]:.3f} ± {entry['mean'][m][1]:.3f}" for m in METRICS]
        versus = entry["vs_baseline"]
        if versus is None:
            lines.append(f"| {arm} (baseline) | {' | '.join(cells)} | - | - |")
            continue
        n = versus["seeds"]
        lines.append(f"| {arm} | {' | '.join(cells)} | {versus['fd_better_seeds']}/{n} | "
                     f"{versus['recall_better_seeds']}/{n} |")  # fmt: skip
        if n and versus["fd_better_seeds"] == n and versus["recall_better_seeds"] == n:
            improved.append(arm)
    verdict = (
        f"reproduced for {', '.join(improved)} (lower FD and higher recall than gamma = 0 on every seed)"
        if improved
        else "not reproduced: no CEP arm beats gamma = 0 on both FD and recall on every seed"
    )
    stem = "results" if block is None else f"results-{block}"
    lines += ["", f"Verdict: **{verdict}**.", "", f"![CEP: FD and recall per arm]({stem}.png)"]
    plot(summary, experiment_dir / f"{stem}.png")
    replace_block(experiment_dir / "README.md", "\n".join(lines), name=block)
    result = {
        "command": command,
        "headline": f"CEP vs gamma = 0: {verdict.split(':')[0].split(' (')[0]}",
        "arms": summary,
    }
    (experiment_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    return result
