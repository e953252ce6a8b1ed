"""Analyses of sweeps (see :mod:`keel.core.sweep`): tables and plots written into experiment READMEs.

* :func:`final_metric_table` compares arms by a final metric (best grid point per arm by the mean
  over seeds), with mean, standard deviation and every seed's value.
* :func:`steps_to_target` is the optimizer-paper measurement: the target is the reference arm's
  final validation loss; for every arm it reports the steps (and wall-clock seconds) each seed needed
  to reach it, the ratio to the reference, the paper's claim, and a verdict.

Both choose each arm's grid point on the sweep's own validation metric (the same data that is
reported), which the README states; with few seeds that favours every arm alike.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.core.plotting import read_metrics
from keel.core.report import replace_block
from keel.core.sweep import RunRecord


def _key(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or "-"


def by_arm_and_setting(records: Sequence[RunRecord]) -> dict[str, dict[str, list[RunRecord]]]:
    """Group runs by arm, then by grid point."""
    groups: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[record.arm][_key(record.params)].append(record)
    return groups


def final_value(record: RunRecord, metric: str) -> float:
    """The run's final value of ``metric`` from its summary, or NaN when it was not logged."""
    value = record.summary.get("metrics", {}).get(metric)
    return float(value) if value is not None else math.nan


def best_setting(settings: dict[str, list[RunRecord]], metric: str, mode: str = "min") -> str:
    """The grid point whose mean final ``metric`` over seeds is best (NaN counts as worst)."""

    def score(runs: list[RunRecord]) -> float:
        values = [final_value(r, metric) for r in runs]
        mean = statistics.fmean(values) if values else math.nan
        if math.isnan(mean):
            return math.inf
        return mean if mode == "min" else -mean

    return min(settings, key=lambda key: score(settings[key]))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite ``values`` (sd 0 for one value, NaNs for none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def format_mean_sd(mean: float, sd: float, percent: bool = False) -> str:
    """``0.1234 ± 0.0056`` (or ``12.3% ± 0.6`` with ``percent``); ``n/a`` for a NaN mean."""
    if math.isnan(mean):
        return "n/a"
    if percent:
        return f"{100 * mean:.1f}% ± {100 * sd:.1f}"
    return f"{mean:.4f} ± {sd:.4f}"


def separated(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether every value of ``a`` is above every value of ``b`` (the strictest reading of a few seeds)."""
    return bool(a) and bool(b) and min(a) > max(b)


def _mean_std(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.4f}"
    return f"{statistics.fmean(finite):.4f} ± {statistics.stdev(finite):.4f}"


def plot_curves(curves: dict[str, list[tuple[list[int], list[float]]]], out: Path, ylabel: str, title: str) -> Path:
    """Plot each arm's curves (one line per seed, same colour) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for index, (arm, runs) in enumerate(curves.items()):
        for seed_index, (steps, values) in enumerate(runs):
            axes.plot(steps, values, color=colours(index % 10), alpha=0.8, label=arm if seed_index == 0 else None)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)
    return out


def final_metric_table(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    tiny: bool = False,
    metric: str = "val/loss",
    mode: str = "min",
    paper: str = "",
) -> str:
    """Write a table of each arm's best setting by ``metric`` into the experiment README.

    Returns:
        The Markdown written.
    """
    groups = by_arm_and_setting(records)
    lines = [
        f"| arm | best setting | {metric} (mean ± sd over seeds) | per seed |",
        "|---|---|---|---|",
    ]
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for arm, settings in groups.items():
        best = best_setting(settings, metric, mode)
        values = [final_value(r, metric) for r in settings[best]]
        per_seed = ", ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {arm} | {best} | {_mean_std(values)} | {per_seed} |")
        curves[arm] = [read_metrics(r.metrics_csv(), [metric]).get(metric, ([], [])) for r in settings[best]]
    plot_curves(curves, experiment_dir / "results.png", metric, f"{experiment_dir.name}: best setting per arm")
    body = _header(command, sweep_dir, records, tiny, paper) + ["", *lines, "", "![curves](results.png)"]
    text = "\n".join(body)
    replace_block(experiment_dir / "README.md", text)
    return text


def _header(command: str, sweep_dir: Path, records: Sequence[RunRecord], tiny: bool, paper: str) -> list[str]:
    seeds = sorted({r.seed for r in records})
    scale = "tiny (CI) scale: a smoke test, not a measurement" if tiny else "a measurement"
    lines = [
        f"Produced by `{command}` ({len(records)} runs, seeds {seeds}, {scale}; sweep `{sweep_dir.name}`).",
        "Each arm's setting is the grid point with the best mean validation metric over seeds.",
    ]
    if paper:
        lines += ["", f"Paper: {paper}"]
    return lines


def first_step_reaching(metrics_csv: Path, metric: str, target: float) -> tuple[int | None, float | None]:
    """The first logged step where ``metric`` <= ``target``, and the wall-clock seconds at that step."""
    curves = read_metrics(metrics_csv, [metric, "perf/elapsed_s"])
    steps, values = curves.get(metric, ([], []))
    for step, value in zip(steps, values, strict=True):
        if value <= target:
            t_steps, t_values = curves.get("perf/elapsed_s", ([], []))
            seconds = None
            for s, v in zip(t_steps, t_values, strict=True):
                if s <= step:
                    seconds = v
            return step, seconds
    return None, None


def grid_table(groups: dict[str, dict[str, list[RunRecord]]], metric: str, order: Sequence[str]) -> list[str]:
    """Markdown rows: every arm's mean final ``metric`` over seeds at every grid point it ran."""
    settings = sorted({key for arm in order for key in groups[arm]}, key=_setting_order)
    lines = [f"Mean final {metric} over seeds at every grid point:", ""]
    lines += ["| arm | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for arm in order:
        cells = []
        for key in settings:
            runs = groups[arm].get(key)
            cells.append(f"{statistics.fmean(final_value(r, metric) for r in runs):.4f}" if runs else "")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _setting_order(key: str) -> tuple[Any, ...]:
    # "lr=0.00025" before "lr=0.001": numeric values sort as numbers
    parts = []
    for item in key.split(", "):
        name, _, value = item.partition("=")
        try:
            parts.append((name, 0, float(value), ""))
        except ValueError:
            parts.append((name, 1, 0.0, value))
    return tuple(parts)


def mean_curve(records: Sequence[RunRecord], metric: str) -> tuple[list[int], list[float]]:
    """The seed-averaged curve of ``metric``: its mean over ``records`` at the steps every run logged."""
    curves = [dict(zip(*read_metrics(r.metrics_csv(), [metric]).get(metric, ([], [])), strict=True)) for r in records]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [statistics.fmean(c[s] for c in curves) for s in steps]


def _seconds_at(records: Sequence[RunRecord], step: int) -> float | None:
    """Mean over runs of the training seconds elapsed at ``step`` (the last logged time at or before it)."""
    times = []
    for record in records:
        t_steps, t_values = read_metrics(record.metrics_csv(), ["perf/elapsed_s"]).get("perf/elapsed_s", ([], []))
        before = [v for s, v in zip(t_steps, t_values, strict=True) if s <= step]
        if before:
            times.append(before[-1])
    return statistics.fmean(times) if len(times) == len(records) else None


def steps_to_target(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    reference_arm: str,
    tiny: bool = False,
    metric: str = "val/loss",
    claim_ratio: float = 0.5,
    paper: str = "",
    extra_metrics: Sequence[str] = (),
) -> str:
    """Steps and wall-clock each arm needs to reach the reference arm's final ``metric``.

    The target is the reference arm's final ``metric`` averaged over seeds (at its best setting). An
    arm's steps to the target are the first step at which its seed-averaged curve is at or below
    the target, so the reference itself needs its full run by construction, or fewer when its curve
    dips below its final value earlier. Each seed's own first step is shown beside it; a single seed
    of the reference ending above the mean is expected and does not void the comparison.

    Args:
        records: The sweep's runs.
        experiment_dir: Where the README and plot go.
        sweep_dir: The sweep folder (named in the README).
        command: The command that produced the sweep.
        reference_arm: The baseline (AdamW); its best setting's mean final metric is the target.
        tiny: Whether this was the tiny sweep.
        metric: The validation metric (lower is better).
        claim_ratio: The paper's claimed steps ratio (0.5 = "2x fewer steps").
        paper: The paper's claim, quoted in the README.
        extra_metrics: Further final metrics to report per arm at its best setting (e.g.
            ``sophia/win_rate``); an arm that did not log one shows ``n/a``.

    Returns:
        The Markdown written.
    """
    groups = by_arm_and_setting(records)
    if reference_arm not in groups:
        raise ValueError(f"reference arm '{reference_arm}' is not in the sweep")
    best = {arm: best_setting(settings, metric) for arm, settings in groups.items()}
    reference_runs = groups[reference_arm][best[reference_arm]]
    target = statistics.fmean(final_value(r, metric) for r in reference_runs)
    table = [
        f"Target: {reference_arm}'s final {metric} at its best setting, {target:.4f} (mean over seeds). Steps to "
        "target: the first validation at which the arm's seed-averaged curve is at or below it.",
        "",
        "| arm | setting | final " + metric + " | steps to target | per seed | steps ratio | "
        "wall-clock to target (s) | time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"target": target, "arms": {}}
    order = [reference_arm, *[a for a in groups if a != reference_arm]]
    rows = {}
    for arm in order:
        runs = groups[arm][best[arm]]
        per_seed = [first_step_reaching(r.metrics_csv(), metric, target)[0] for r in runs]
        steps, values = mean_curve(runs, metric)
        # a relative slack of 1e-9: the reference's mean curve ends exactly at the target
        reached = next((s for s, v in zip(steps, values, strict=True) if v <= target + 1e-9 * abs(target)), None)
        seconds = _seconds_at(runs, reached) if reached is not None else None
        rows[arm] = (runs, per_seed, reached, seconds)
    _, _, reference_steps, reference_seconds = rows[reference_arm]
    for arm in order:
        runs, per_seed, reached, seconds = rows[arm]
        ratio = reached / reference_steps if reached and reference_steps else None
        time_ratio = seconds / reference_seconds if seconds and reference_seconds else None
        finals = [final_value(r, metric) for r in runs]
        shown_steps = ", ".join("not reached" if s is None else str(s) for s in per_seed)
        table.append(
            f"| {arm} | {best[arm]} | {_mean_std(finals)} | {reached if reached is not None else 'not reached'} | "
            f"{shown_steps} | {f'{ratio:.2f}' if ratio else '-'} | {f'{seconds:.0f}' if seconds else '-'} | "
            f"{f'{time_ratio:.2f}' if time_ratio else '-'} |"
        )
        summary["arms"][arm] = {
            "setting": best[arm],
            "steps": reached,
            "per_seed": per_seed,
            "ratio": ratio,
            "seconds": seconds,
            "time_ratio": time_ratio,
        }
    verdicts = []
    for arm in order[1:]:
        ratio = summary["arms"][arm]["ratio"]
        if ratio is None:
            verdicts.append(f"- **{arm}: not reproduced**: its seed-averaged curve never reached the target.")
        elif ratio <= claim_ratio:
            verdicts.append(f"- **{arm}: reproduced**: {ratio:.2f}x the reference's steps (claim {claim_ratio:.2f}x).")
        elif ratio < 0.9:
            verdicts.append(
                f"- **{arm}: partly reproduced**: faster ({ratio:.2f}x the steps) but short of the claimed "
                f"{claim_ratio:.2f}x."
            )
        else:
            verdicts.append(
                f"- **{arm}: not reproduced**: {ratio:.2f}x the reference's steps (claim {claim_ratio:.2f}x)."
            )
    curves = {
        arm: [read_metrics(r.metrics_csv(), [metric]).get(metric, ([], [])) for r in rows[arm][0]] for arm in order
    }
    plot_curves(
        curves, experiment_dir / "results.png", metric, f"{experiment_dir.name}: {metric}, best setting per arm"
    )
    body = _header(command, sweep_dir, records, tiny, paper) + ["", *table, ""]
    body += [*grid_table(groups, metric, order), ""]
    if extra_metrics:
        body += [
            "| arm | " + " | ".join(f"final {m}" for m in extra_metrics) + " |",
            "|---|" + "---|" * len(extra_metrics),
        ]
        for arm in order:
            runs = groups[arm][best[arm]]
            body.append(
                f"| {arm} | " + " | ".join(_mean_std([final_value(r, m) for r in runs]) for m in extra_metrics) + " |"
            )
        body.append("")
    body += ["Verdict:", "", *verdicts, "", "![validation loss per arm and seed](results.png)"]
    text = "\n".join(body)
    replace_block(experiment_dir / "README.md", text)
    (experiment_dir / "results.json").write_text(json.dumps({"command": command, **summary}, indent=2) + "\n")
    return text
