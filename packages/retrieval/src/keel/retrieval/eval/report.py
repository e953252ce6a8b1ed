"""The analysis of a retrieval sweep: every arm's test metrics against a baseline arm (and a reference).

:func:`arm_comparison` is a ``keel sweep`` analysis target (see :mod:`keel.core.sweep`). For every
arm it tabulates the mean and standard deviation over seeds of the final test metrics and of the
score before training ("zero-shot"), the difference from the baseline arm, and optionally the share
of a reference arm's score (a teacher); it draws ``results.png``, writes ``results.json`` and the
README's results block, with the paper's claim and one verdict line per comparison. "Separated"
means every seed of one arm beats every seed of the other, the strictest reading of three seeds;
with a single seed per arm no such claim is made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.core.analysis import by_arm_and_setting, final_value, format_mean_sd, mean_sd, separated
from keel.core.report import replace_block
from keel.core.sweep import RunRecord


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], metric: str) -> str:
    """One verdict line: the difference of the means and whether the seeds separate."""
    gap = mean_sd(a)[0] - mean_sd(b)[0]
    if math.isnan(gap):
        return f"- {name_a} vs {name_b}: no result (a run logged no test/{metric})."
    if min(len(a), len(b)) < 2:
        clear = "one seed: no spread to compare with"
    elif separated(a, b):
        clear = f"every {name_a} seed above every {name_b} seed"
    elif separated(b, a):
        clear = f"every {name_a} seed below every {name_b} seed"
    else:
        clear = "seeds overlap"
    return f"- {name_a} vs {name_b}: {gap:+.4f} {metric} ({clear})."


def plot_arms(summary: dict[str, Any], metric: str, out: Path, title: str) -> Path:
    """Bars of each arm's test and zero-shot ``metric`` (mean ± sd, seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    arms = list(summary["arms"])
    figure = Figure(figsize=(max(6.0, 1.4 * len(arms)), 4.6), dpi=110)
    axes = figure.add_subplot()
    width = 0.38
    for offset, key, label, colour in (
        (-width / 2, "test", "trained", "tab:blue"),
        (width / 2, "zero_shot", "before training", "tab:gray"),
    ):
        for index, arm in enumerate(arms):
            entry = summary["arms"][arm][key]
            if math.isnan(entry["mean"]):
                continue
            x = index + offset
            axes.bar(x, entry["mean"], width, yerr=entry["std"], color=colour, alpha=0.85, capsize=3, label=label)
            finite = [v for v in entry["seeds"] if math.isfinite(v)]
            axes.scatter([x] * len(finite), finite, color="black", s=8, zorder=3)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes.legend(unique.values(), unique.keys(), fontsize=8)
    axes.set_xticks(range(len(arms)), arms)
    axes.set_ylabel(f"test {metric}")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    return out


def results_stem(block: str | None) -> str:
    """The file stem of a results block's figure and JSON: ``results`` or ``results-BLOCK``."""
    return "results" if block is None else f"results-{block}"


def arm_comparison(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    baseline_arm: str,
    reference_arm: str | None = None,
    comparisons: Sequence[Sequence[str]] = (),
    metric: str = "pool_mrr@10",
    metrics: Sequence[str] = ("pool_mrr@10", "pool_ndcg@10", "pool_recall@100"),
    tiny: bool = False,
    paper: str = "",
    block: str | None = None,
) -> str:
    """Write the README block comparing every arm with the baseline arm on the test split.

    Args:
        records: The sweep's runs (one setting per arm; several seeds).
        experiment_dir: Where the README, ``results.png`` and ``results.json`` go.
        sweep_dir: The sweep folder (named in the README).
        command: The command that produced the sweep.
        baseline_arm: The arm every other arm is compared with (no pre-training, no teacher ...).
        reference_arm: An upper reference (the teacher): each arm's share of its mean is shown.
        comparisons: Extra ``[arm, other arm]`` pairs to compare (e.g. ``[lead, final_kd]``).
        metric: The headline metric (``test/<metric>``, higher is better).
        metrics: Every metric shown.
        tiny: Whether this was the CI smoke test.
        paper: The paper's claim, quoted in the README.
        block: The README block to write (``<!-- results:BLOCK:start -->``; ``None``: the main
            ``results`` block), so each sweep profile (another corpus) keeps its own table; its figure
            and JSON are then ``results-BLOCK.png`` and ``results-BLOCK.json``.

    Returns:
        The Markdown written.

    Raises:
        ValueError: If the baseline or reference arm is not in the sweep.
    """
    groups = by_arm_and_setting(records)
    for arm in (baseline_arm, reference_arm):
        if arm is not None and arm not in groups:
            raise ValueError(f"arm '{arm}' is not in the sweep (arms: {', '.join(groups)})")
    runs = {arm: [r for setting in settings.values() for r in setting] for arm, settings in groups.items()}
    scores = {arm: [final_value(r, f"test/{metric}") for r in arm_runs] for arm, arm_runs in runs.items()}
    base_mean = mean_sd(scores[baseline_arm])[0]
    reference_mean = mean_sd(scores[reference_arm])[0] if reference_arm else math.nan

    header = ["arm", "seeds", *[f"test {m}" for m in metrics], f"zero-shot {metric}", f"vs {baseline_arm}"]
    if reference_arm:
        header.append(f"share of {reference_arm}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict[str, Any] = {"metric": f"test/{metric}", "baseline_arm": baseline_arm, "arms": {}}
    for arm, arm_runs in runs.items():
        zero = [final_value(r, f"zeroshot/{metric}") for r in arm_runs]
        entry: dict[str, Any] = {"seeds": [r.seed for r in arm_runs]}
        cells = [arm, str(len(arm_runs))]
        for name in metrics:
            values = [final_value(r, f"test/{name}") for r in arm_runs]
            mean, std = mean_sd(values)
            entry[name] = {"mean": mean, "std": std, "per_seed": values}
            cells.append(format_mean_sd(mean, std))
        for key, values in (("test", scores[arm]), ("zero_shot", zero)):
            mean, std = mean_sd(values)
            entry[key] = {"mean": mean, "std": std, "seeds": values}
        gap = entry["test"]["mean"] - base_mean
        cells += [format_mean_sd(*mean_sd(zero)), "(baseline)" if arm == baseline_arm else f"{gap:+.4f}"]
        if reference_arm:
            share = entry["test"]["mean"] / reference_mean if reference_mean else math.nan
            entry["share_of_reference"] = share
            cells.append("(reference)" if arm == reference_arm else f"{share:.1%}")
        summary["arms"][arm] = entry
        lines.append("| " + " | ".join(cells) + " |")

    verdicts = [
        compare(arm, scores[arm], baseline_arm, scores[baseline_arm], metric)
        for arm in runs
        if arm not in (baseline_arm, reference_arm)
    ]
    verdicts += [compare(a, scores[a], b, scores[b], metric) for a, b in comparisons if a in scores and b in scores]
    stem = results_stem(block)
    title = f"{experiment_dir.name}{'' if block is None else f' ({block})'}: test {metric} per arm"
    plot_arms(summary, metric, experiment_dir / f"{stem}.png", title)
    seeds = sorted({r.seed for r in records})
    scale = "; tiny (CI) scale: a smoke test, not a measurement" if tiny else ""
    body = [f"Produced by `{command}` ({len(records)} runs, seeds {seeds}{scale}; sweep `{sweep_dir.name}`)."]
    if paper:
        body += ["", f"Paper: {paper}"]
    body += ["", *lines, "", "Verdict:", "", *verdicts, "", f"![test {metric} per arm]({stem}.png)"]
    text = "\n".join(body)
    replace_block(experiment_dir / "README.md", text, name=block)
    summary["verdicts"] = verdicts
    summary["headline"] = f"test {metric}: " + ", ".join(
        f"{arm} {summary['arms'][arm]['test']['mean']:.3f}" for arm in runs
    )
    (experiment_dir / f"{stem}.json").write_text(json.dumps({"command": command, **summary}, indent=2) + "\n")
    return text
