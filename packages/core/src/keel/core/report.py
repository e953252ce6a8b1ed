"""``keel report``: put a run's results into its experiment's README, so no number is typed by hand.

The README holds a block between ``<!-- results:start -->`` and ``<!-- results:end -->``; this
command replaces it with a table built from the run's ``summary.json`` and ``resolved.yaml``, the
run's generated samples when there are any, and copies the run's ``loss_curve.png`` beside the
README. Experiments with their own multi-run comparisons write the same block with their own script.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from pathlib import Path

import yaml

from keel.core.errors import ConfigError

START, END = "<!-- results:start -->", "<!-- results:end -->"


def replace_block(readme: Path, body: str, name: str | None = None) -> None:
    """Replace the results block of ``readme`` with ``body``.

    Args:
        readme: The README to edit.
        body: The Markdown to put between the markers.
        name: ``None`` for the block between ``<!-- results:start -->`` and ``<!-- results:end -->``;
            a name selects ``<!-- results:NAME:start -->`` ... ``<!-- results:NAME:end -->``, so one
            README can hold the results of several commands.

    Raises:
        ConfigError: If the README has no such markers.
    """
    start, end = (START, END) if name is None else (f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->")
    text = readme.read_text()
    if start not in text or end not in text:
        raise ConfigError(f"{readme} has no {start} ... {end} block to fill")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text, count=1))


def _hardware(summary: dict, resolved: dict) -> str:
    trainer = resolved.get("trainer", {})
    accelerator = trainer.get("accelerator", "?")
    if accelerator == "cpu":
        import os

        return f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return f"{accelerator} x {trainer.get('devices', '?')}"


def run_table(run_dir: Path) -> str:
    """A Markdown table of one run's final metrics, throughput and settings."""
    summary = json.loads((run_dir / "summary.json").read_text())
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    trainer = resolved.get("trainer", {})
    rows = [
        ("steps", f"{summary['global_step']:,}"),
        ("wall time", f"{summary['seconds'] / 60:.1f} min"),
        ("hardware", _hardware(summary, resolved)),
        ("strategy / precision", f"{trainer.get('strategy')} / {trainer.get('precision')}"),
    ]
    for key in sorted(summary["metrics"]):
        if key.startswith(("val/", "test/")) and not key.endswith("_step"):
            rows.append((key, f"{summary['metrics'][key]:.4f}"))
    labels = {
        "tokens_per_sec": "training tokens/s",
        "samples_per_sec": "training samples/s",
        "peak_memory_gb": "peak GPU memory (GiB)",
        "peak_rss_gb": "peak process memory (GiB)",
    }
    for key, label in labels.items():
        if key in summary.get("throughput", {}):
            rows.append((label, f"{summary['throughput'][key]:,.2f}"))
    lines = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return "\n".join(lines)


def report(experiment_dir: Path, run_dir: Path, command: str) -> None:
    """Fill ``experiment_dir/README.md``'s results block from ``run_dir``.

    Args:
        experiment_dir: The experiment folder (holding README.md).
        run_dir: The finished run to report.
        command: The command that produced the run, shown above the table.
    """
    for needed in ("summary.json", "resolved.yaml"):
        if not (run_dir / needed).is_file():
            raise ConfigError(f"{run_dir} has no {needed}: is it a finished keel run?")
    parts = [
        f"Produced by `{command}` (run `{run_dir.name}`), then `keel report {experiment_dir.name}`.",
        "",
        run_table(run_dir),
    ]
    curve = run_dir / "loss_curve.png"
    if curve.is_file():
        shutil.copyfile(curve, experiment_dir / "loss_curve.png")
        parts += ["", "![training and validation loss](loss_curve.png)"]
    samples = run_dir / "samples.txt"
    if samples.is_file():
        text = samples.read_text().strip()
        last = text[text.rfind("=== step") :] if "=== step" in text else text
        parts += ["", "Samples from the final model:", "", "```text", last[:2500].rstrip(), "```"]
    replace_block(experiment_dir / "README.md", "\n".join(parts))
    record = {"run": run_dir.name, "command": command, **json.loads((run_dir / "summary.json").read_text())}
    (experiment_dir / "results.json").write_text(json.dumps(record, indent=2) + "\n")


def headline(record: dict) -> str:
    """The few numbers that summarise a reported run or sweep, for the repository README's table."""
    if isinstance(record.get("headline"), str):  # an analysis that summarises itself
        return record["headline"]
    arms = record.get("arms")
    if isinstance(arms, dict) and "target" in record:  # steps_to_target: each arm's ratio to the reference
        ratios = [
            f"{arm} {v['ratio']:.2f}x"
            for arm, v in arms.items()
            if isinstance(v, dict) and v.get("ratio") not in (None, 1.0)
        ]
        return "steps to the reference's loss: " + ", ".join(ratios) if ratios else "see README"
    metrics = record.get("metrics", {})
    shown = [f"{k} {metrics[k]:.3f}" for k in sorted(metrics) if k.startswith("val/") and not k.endswith("_step")]
    tokens = record.get("throughput", {}).get("tokens_per_sec")
    if tokens:
        shown.append(f"{tokens:,.0f} tokens/s")
    return ", ".join(shown[:4]) or "see README"


def update_index(readme: Path, experiments: Path) -> None:
    """Rebuild the repository README's results table from every experiment's results files.

    An experiment's ``results.json`` gives its row; each ``results-BLOCK.json`` (a sweep profile's
    own table: another corpus, another model size) adds its headline and command under the name
    ``BLOCK``.
    """
    from keel.core.config import list_experiments

    rows = ["| experiment | what it runs | latest result | command |", "|---|---|---|---|"]
    for name, description in list_experiments(experiments):
        folder = experiments / name
        files = [folder / "results.json", *sorted(folder.glob("results-*.json"))]
        results, commands = [], []
        for path in (f for f in files if f.is_file()):
            record = json.loads(path.read_text())
            block = path.stem.removeprefix("results").removeprefix("-")
            results.append(f"{block}: {headline(record)}" if block else headline(record))
            commands.append(f"`{record['command']}`")
        result = "<br>".join(results) or "not run yet"
        command = "<br>".join(commands) or f"`keel run {name}`"
        rows.append(f"| [{name}](experiments/{name}/README.md) | {description} | {result} | {command} |")
    replace_block(readme, "\n".join(rows))


def latest_finished_run(runs_dir: Path, experiment: str) -> Path:
    """The newest run of ``experiment`` that wrote a ``summary.json``."""
    folder = runs_dir / experiment
    runs = sorted(p for p in folder.glob("*/summary.json")) if folder.is_dir() else []
    if not runs:
        raise ConfigError(f"no finished run of '{experiment}' under {runs_dir}; run `keel run {experiment}` first")
    return runs[-1].parent
