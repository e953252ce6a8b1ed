"""The T-Stitch experiment's analysis: sweep the small model's share, score quality and time.

:func:`stitch_table` is the ``keel sweep diffusion/t_stitch`` analysis target. The sweep trains a
small and a large denoiser per seed (same data, same noise schedule); this function pairs them by
seed and, for every small fraction r, samples the same noise with T-Stitch, times it, and scores the
images against the real test digits (Frechet distance, precision/recall, class accuracy on the
keel digit classifier). The honest alternative is measured beside it: the large model alone with
fewer sampler steps at the same compute, where the compute of a stitched run is
``steps * ((1 - r) + r * c)`` large-model calls and ``c`` is the FLOP count of a small call relative
to a large one (counted with ``torch.utils.flop_counter``, so the accounting does not depend on how
busy the machine is; wall-clock seconds are reported beside it). Results go to ``results.json``,
``results.png`` and the README block.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from keel.core.analysis import mean_sd
from keel.core.errors import ConfigError
from keel.core.report import replace_block
from keel.core.runner import load_trained
from keel.core.sweep import RunRecord
from keel.diffusion.eval.reference import ReferenceSet, class_balanced_labels, reference_set, sample_in_batches
from keel.diffusion.t_stitch.sampler import t_stitch_sample

DEFAULT_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _pairs(records: Sequence[RunRecord], small_arm: str, large_arm: str) -> dict[int, dict[str, RunRecord]]:
    pairs: dict[int, dict[str, RunRecord]] = defaultdict(dict)
    for record in records:
        if record.arm in (small_arm, large_arm):
            pairs[record.seed]["small" if record.arm == small_arm else "large"] = record
    complete = {seed: pair for seed, pair in sorted(pairs.items()) if len(pair) == 2}
    if not complete:
        raise ConfigError(f"the sweep has no seed with both a {small_arm!r} and a {large_arm!r} run")
    return complete


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def forward_flops(module: Any, batch: int = 8) -> int:
    """FLOPs of one conditional denoiser call on ``batch`` images (what a sampler step costs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(batch, *module.image_shape)
    t = torch.full((batch,), 500)
    fn = module.model_fn(torch.arange(batch) % 10, guidance_scale=1.0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x, t)
    return int(counter.get_total_flops())


def measure_seed(
    small: Any,
    large: Any,
    reference: ReferenceSet,
    fractions: Sequence[float],
    num_samples: int,
    sampler: str,
    steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """Every fraction's scores and seconds, and the equal-compute large-model baseline, for one seed."""
    labels = class_balanced_labels(num_samples)

    def stitched(fraction: float) -> tuple[torch.Tensor, dict[str, int]]:
        generator = torch.Generator().manual_seed(seed)
        chunks, calls = [], {"small": 0, "large": 0}
        for start in range(0, num_samples, batch_size):
            part = labels[start : start + batch_size]
            images, used = t_stitch_sample(small, large, fraction, len(part), part, sampler, steps,
                                           guidance_scale, generator=generator)  # fmt: skip
            chunks.append(images)
            calls = {k: calls[k] + used[k] for k in calls}
        return torch.cat(chunks), calls

    rows: dict[str, Any] = {"stitch": {}, "large_fewer_steps": {}}
    # warm-up: the first calls at a new shape pay for kernel setup, which must not land on r = 0
    warm = labels[:batch_size]
    t_stitch_sample(small, large, 0.5, len(warm), warm, sampler, 2, guidance_scale)
    for fraction in fractions:
        (images, calls), seconds = _timed(lambda f=fraction: stitched(f))
        scores = reference.score(images, labels)
        rows["stitch"][f"{fraction:g}"] = {**scores, "seconds": seconds, **{f"calls_{k}": v for k, v in calls.items()}}
        print(f"  seed {seed} fraction {fraction:g}: fd {scores['fd']:.2f}, {seconds:.1f} s", flush=True)
    cost_ratio = forward_flops(small) / forward_flops(large)
    rows["small_cost_ratio"] = cost_ratio
    for fraction in fractions:
        if fraction in (0.0, 1.0):
            continue
        equal_steps = max(1, round(steps * ((1 - fraction) + fraction * cost_ratio)))
        images, seconds = _timed(
            lambda n=equal_steps: sample_in_batches(
                large, labels, num_samples, sampler, n, guidance_scale, seed, batch_size
            )
        )
        scores = reference.score(images, labels)
        rows["large_fewer_steps"][f"{fraction:g}"] = {**scores, "seconds": seconds, "steps": equal_steps}
    return rows


def summarise(per_seed: dict[int, dict[str, Any]], fractions: Sequence[float]) -> dict[str, Any]:
    """Mean and sd over seeds of every fraction's scores, for T-Stitch and the fewer-steps baseline."""
    summary: dict[str, Any] = {"stitch": {}, "large_fewer_steps": {}}
    for kind in summary:
        for fraction in fractions:
            key = f"{fraction:g}"
            runs = [rows[kind][key] for rows in per_seed.values() if key in rows[kind]]
            if runs:
                summary[kind][key] = {name: mean_sd([r[name] for r in runs]) for name in runs[0]}
    summary["small_cost_ratio"] = mean_sd([rows["small_cost_ratio"] for rows in per_seed.values()])
    return summary


def largest_safe_fraction(summary: dict[str, Any], tolerance: float) -> float:
    """The largest fraction whose mean FD stays within ``max(tolerance * FD(0), sd of FD(0))`` of FD(0)."""
    fd0, sd0 = summary["stitch"]["0"]["fd"]
    band = max(tolerance * fd0, sd0)
    safe = 0.0
    for key, entry in summary["stitch"].items():
        if entry["fd"][0] <= fd0 + band:
            safe = max(safe, float(key))
        else:
            break  # the claim is about a prefix of the trajectory: stop at the first failure
    return safe


def plot(summary: dict[str, Any], out: Path) -> Path:
    """FD against the small model's share, and FD against sampling time, with the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.4), dpi=110)
    by_fraction, by_time = figure.subplots(1, 2)
    stitch = summary["stitch"]
    xs = [float(k) for k in stitch]
    fd = [stitch[k]["fd"] for k in stitch]
    by_fraction.errorbar(xs, [m for m, _ in fd], yerr=[s for _, s in fd], marker="o", capsize=3, label="T-Stitch")
    by_fraction.set_xlabel("share of steps taken by the small model")
    by_fraction.set_ylabel("Frechet distance (digit features)")
    by_fraction.grid(alpha=0.3)
    by_fraction.legend()
    seconds = [stitch[k]["seconds"][0] for k in stitch]
    by_time.errorbar(seconds, [m for m, _ in fd], yerr=[s for _, s in fd], marker="o", capsize=3, label="T-Stitch")
    fewer = summary["large_fewer_steps"]
    if fewer:
        by_time.errorbar([fewer[k]["seconds"][0] for k in fewer], [fewer[k]["fd"][0] for k in fewer],
                         yerr=[fewer[k]["fd"][1] for k in fewer], marker="s", capsize=3,
                         label="large model, fewer steps (equal compute)")  # fmt: skip
    by_time.set_xlabel("sampling time (s)")
    by_time.set_ylabel("Frechet distance (digit features)")
    by_time.grid(alpha=0.3)
    by_time.legend()
    figure.tight_layout()
    figure.savefig(out)
    return out


def _cell(stats: tuple[float, float], digits: int = 2) -> str:
    mean, sd = stats
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def render(summary: dict[str, Any], header: list[str], safe: float, claim: float) -> str:
    """The README block: the fraction table, the equal-compute baseline, and the verdict."""
    stitch, fewer = summary["stitch"], summary["large_fewer_steps"]
    t0 = stitch["0"]["seconds"][0]
    lines = [
        *header, "",
        "| small share r | time (s) | time saved | FD | precision | recall | accuracy |"
        " large alone, fewer steps: steps | its FD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, entry in stitch.items():
        base = fewer.get(key)
        saved = 1 - entry["seconds"][0] / t0
        base_steps = f"{base['steps'][0]:.0f}" if base else "-"
        lines.append(
            f"| {key} | {_cell(entry['seconds'], 1)} | {100 * saved:.0f}% | {_cell(entry['fd'])} | "
            f"{_cell(entry['precision'], 3)} | {_cell(entry['recall'], 3)} | {_cell(entry['accuracy'], 3)} | "
            f"{base_steps} | {_cell(base['fd']) if base else '-'} |"
        )
    cost, _ = summary["small_cost_ratio"]
    verdict = "reproduced" if safe >= claim else "not reproduced"
    lines += [
        "",
        f"A small-model call costs {cost:.2f} of a large one in FLOPs. Largest share r with no quality loss "
        f"(mean FD within 5% of r = 0, or within its seed spread): **{safe:g}**. "
        f"Paper: {claim:g} of the early steps. Verdict: **{verdict}** at this scale.",
        "",
        "![T-Stitch: FD against the small share and against time](results.png)",
    ]
    return "\n".join(lines)


def stitch_table(
    records: Sequence[RunRecord],
    experiment_dir: Path,
    sweep_dir: Path,
    command: str,
    tiny: bool = False,
    small_arm: str = "small",
    large_arm: str = "large",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    num_samples: int = 1000,
    sampler: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    batch_size: int = 500,
    classifier_steps: int = 1000,
    tolerance: float = 0.05,
    claim: float = 0.4,
    paper: str = "",
) -> dict[str, Any]:
    """Pair the sweep's small and large runs by seed, measure every fraction, write the results.

    Returns:
        The summary written to ``results.json``.
    """
    fractions = sorted(float(f) for f in fractions)
    if tiny:  # the smoke test checks the pipeline, not the numbers
        num_samples, steps, classifier_steps, batch_size = min(num_samples, 40), min(steps, 4), 20, 40
    pairs = _pairs(records, small_arm, large_arm)
    first_large = Path(next(iter(pairs.values()))["large"].run_dir)
    reference = reference_set(first_large, cache_dir=sweep_dir.parent / "digit_classifiers",
                              classifier_steps=classifier_steps)  # fmt: skip
    per_seed = {}
    for seed, pair in pairs.items():
        small, large = load_trained(pair["small"].run_dir), load_trained(pair["large"].run_dir)
        per_seed[seed] = measure_seed(small, large, reference, fractions, num_samples, sampler, steps,
                                      guidance_scale, seed, batch_size)  # fmt: skip
    summary = summarise(per_seed, fractions)
    safe = largest_safe_fraction(summary, tolerance)
    scale = "tiny (CI) scale: a smoke test, not a measurement" if tiny else "a measurement"
    header = [
        f"Produced by `{command}` ({len(pairs)} seeds, {scale}; sweep `{sweep_dir.name}`): {num_samples} "
        f"class-balanced samples per seed and share, {sampler.upper()} {steps} steps, guidance {guidance_scale:g}, "
        f"scored against {reference.size} real test digits (classifier accuracy on them "
        f"{100 * reference.classifier_accuracy:.1f}%).",
    ]
    if paper:
        header += ["", f"Paper: {paper}"]
    plot(summary, experiment_dir / "results.png")
    text = render(summary, header, safe, claim)
    replace_block(experiment_dir / "README.md", text)
    result = {
        "command": command,
        "headline": f"largest small-model share with no FD loss {safe:g} (paper {claim:g})",
        "largest_safe_fraction": safe,
        "claim": claim,
        "summary": summary,
        "per_seed": per_seed,
    }
    (experiment_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result
