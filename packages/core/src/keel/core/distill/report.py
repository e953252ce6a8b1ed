"""The analysis of a distillation sweep: how much of the teacher's score each student keeps.

:func:`retention_table` is a ``keel sweep`` analysis target (see :mod:`keel.core.sweep`). For every
arm it tabulates the mean and standard deviation over seeds of the final test metrics, the score
before fine-tuning ("zero-shot"), and the fraction of the teacher's score retained (each seed's
score divided by the teacher arm's mean); it draws the bar chart ``results.png``, writes
``results.json`` and the README's results block with the paper's claim and a verdict.
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


def plot_retention(summary: dict[str, Any], metric: str, out: Path, title: str) -> Path:
    """Bars of each arm's fine-tuned and zero-shot ``metric`` (mean ± sd, seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    arms = list(summary["arms"])
    figure = Figure(figsize=(8, 4.8), dpi=110)
    axes = figure.add_subplot()
    width = 0.38
    for offset, key, label, colour in (
        (-width / 2, "finetuned", "fine-tuned", "tab:blue"),
        (width / 2, "zero_shot", "zero-shot (before fine-tuning)", "tab:gray"),
    ):
        for index, arm in enumerate(arms):
            entry = summary["arms"][arm][key]
            x = index + offset
            axes.bar(
                x,
                entry["mean"],
                width,
                yerr=entry["std"],
                color=colour,
                alpha=0.85,
                capsize=3,
                label=label if index == 0 else None,
            )
            axes.scatter([x] * len(entry["seeds"]), entry["seeds"], color="black", s=8, zorder=3)
    teacher = summary.get("teacher_score")
    if teacher is not None and math.isfinite(teacher):
        axes.axhline(
            0.99 * teacher, color="tab:red", linestyle="--", linewidth=1, label="99% of the fine-tuned teacher"
        )
    axes.set_xticks(
        range(len(arms)),
        [
            f"{arm}\n({summary['arms'][arm]['retained']['mean'] * 100:.0f}% kept)"
            if arm != summary.get("teacher_arm")
            else f"{arm}"
            for arm in arms
        ],
    )
    axes.set_ylabel(f"test {metric}")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out)
    return out


def retention_table(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    teacher_arm: str = "teacher",
    scratch_arm: str | None = "scratch",
    tiny: bool = False,
    metric: str = "mrr@10",
    metrics: Sequence[str] = ("mrr@10", "recall@1", "recall@10"),
    claim: float = 0.99,
    paper: str = "",
) -> str:
    """Write the README block comparing students with their teacher on the test split.

    Args:
        records: The sweep's runs (one setting per arm; several seeds).
        experiment_dir: Where the README, ``results.png`` and ``results.json`` go.
        sweep_dir: The sweep folder (named in the README).
        command: The command that produced the sweep.
        teacher_arm: The arm that fine-tunes the teacher itself: the reference score.
        scratch_arm: The arm trained without distillation, the lower reference (None: none).
        tiny: Whether this was the CI smoke test.
        metric: The headline metric (``test/<metric>``, higher is better) for the retained fraction.
        metrics: Every metric shown.
        claim: The paper's claimed fraction retained.
        paper: The paper's claim, quoted in the README.

    Returns:
        The Markdown written.

    Raises:
        ValueError: If the teacher arm is not in the sweep.
    """
    groups = by_arm_and_setting(records)
    if teacher_arm not in groups:
        raise ValueError(f"teacher arm '{teacher_arm}' is not in the sweep")
    runs = {arm: [r for setting in settings.values() for r in setting] for arm, settings in groups.items()}
    order = [teacher_arm, *[a for a in runs if a != teacher_arm]]
    teacher_score, _ = mean_sd([final_value(r, f"test/{metric}") for r in runs[teacher_arm]])
    summary: dict[str, Any] = {"metric": f"test/{metric}", "teacher_arm": teacher_arm, "teacher_score": teacher_score}
    summary["arms"] = {}
    header = ["arm", "seeds", *[f"test {m}" for m in metrics], f"zero-shot {metric}", f"{metric} retained"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in order:
        scores = [final_value(r, f"test/{metric}") for r in runs[arm]]
        zero = [final_value(r, f"zeroshot/{metric}") for r in runs[arm]]
        retained = [s / teacher_score for s in scores] if teacher_score else [math.nan] * len(scores)
        entry: dict[str, Any] = {"seeds": [r.seed for r in runs[arm]]}
        cells = [arm, str(len(scores))]
        for name in metrics:
            values = [final_value(r, f"test/{name}") for r in runs[arm]]
            mean, std = mean_sd(values)
            entry[name] = {"mean": mean, "std": std, "per_seed": values}
            cells.append(format_mean_sd(mean, std))
        for key, values in (("finetuned", scores), ("zero_shot", zero), ("retained", retained)):
            mean, std = mean_sd(values)
            entry[key] = {"mean": mean, "std": std, "seeds": values}
        cells += [
            format_mean_sd(*mean_sd(zero)),
            "100% (reference)" if arm == teacher_arm else format_mean_sd(*mean_sd(retained), percent=True),
        ]
        summary["arms"][arm] = entry
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = _verdicts(summary, order, teacher_arm, scratch_arm, metric, claim)
    plot_retention(summary, metric, experiment_dir / "results.png", f"{experiment_dir.name}: test {metric} per arm")
    seeds = sorted({r.seed for r in records})
    scale = "; tiny (CI) scale: a smoke test, not a measurement" if tiny else ""
    body = [
        f"Produced by `{command}` ({len(records)} runs, seeds {seeds}{scale}; sweep `{sweep_dir.name}`).",
        f"Retained = a seed's test {metric} divided by the fine-tuned teacher's mean test {metric}.",
    ]
    if paper:
        body += ["", f"Paper: {paper}"]
    body += ["", *lines, "", "Verdict:", "", *verdicts, "", f"![test {metric} per arm](results.png)"]
    text = "\n".join(body)
    replace_block(experiment_dir / "README.md", text)
    summary["verdicts"] = verdicts
    kept = [
        f"{arm} {summary['arms'][arm]['retained']['mean']:.0%}"
        for arm in order
        if arm != teacher_arm and math.isfinite(summary["arms"][arm]["retained"]["mean"])
    ]
    summary["headline"] = f"share of the teacher's test {metric} kept: " + ", ".join(kept)
    (experiment_dir / "results.json").write_text(json.dumps({"command": command, **summary}, indent=2) + "\n")
    return text


def _verdicts(
    summary: dict[str, Any], order: list[str], teacher_arm: str, scratch_arm: str | None, metric: str, claim: float
) -> list[str]:
    arms = summary["arms"]
    students = [a for a in order if a != teacher_arm]
    verdicts = []
    for arm in students:
        if arm == scratch_arm:
            continue
        kept = arms[arm]["retained"]["mean"]
        if math.isnan(kept):
            verdicts.append(f"- **{arm}: no result**: its runs logged no test/{metric}.")
        elif kept >= claim - 0.02:
            verdicts.append(
                f"- **{arm}: reproduced**: keeps {kept:.1%} of the teacher's {metric} (claim: {claim:.0%})."
            )
        else:
            verdicts.append(
                f"- **{arm}: not reproduced at this scale**: keeps {kept:.1%} of the teacher's {metric} "
                f"(claim: {claim:.0%})."
            )
    distilled = [a for a in students if a != scratch_arm]
    if scratch_arm in arms:
        base = arms[scratch_arm]["finetuned"]
        for arm in distilled:
            mine = arms[arm]["finetuned"]
            gap = mine["mean"] - base["mean"]
            clear = (
                "every seed above every scratch seed" if separated(mine["seeds"], base["seeds"]) else "seeds overlap"
            )
            verdicts.append(f"- {arm} vs {scratch_arm}: {gap:+.4f} {metric} ({clear}).")
    if len(distilled) == 2:
        first, second = distilled
        gap = arms[first]["finetuned"]["mean"] - arms[second]["finetuned"]["mean"]
        a, b = arms[first]["finetuned"]["seeds"], arms[second]["finetuned"]["seeds"]
        clear = "separated over seeds" if separated(a, b) or separated(b, a) else "seeds overlap"
        verdicts.append(f"- {first} vs {second}: {gap:+.4f} {metric} ({clear}).")
    return verdicts
