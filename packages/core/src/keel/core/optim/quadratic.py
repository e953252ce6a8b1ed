"""A rotated, ill-conditioned matrix quadratic on which a diagonal preconditioner cannot help.

The first problem of the SOAP experiment (``experiments/core/soap``, part a):

    L(W) = 1/2 tr((W - W*)^T A (W - W*) B),   A = Q_A diag(a) Q_A^T,   B = Q_B diag(b) Q_B^T,

with ``W`` of shape ``rows x cols``, eigenvalues ``a`` and ``b`` log-spaced over ``[1, condition]``
and Haar-random rotations ``Q_A``, ``Q_B``. The Hessian of ``vec(W)`` is ``B kron A``: condition
number ``condition**2`` and eigenvectors dense in the coordinate basis, so Adam's per-coordinate
second moment sees a blend of every curvature and cannot undo the conditioning. Shampoo's factors
``sum G G^T`` and ``sum G^T G`` are built from gradients ``A (W - W*) B``, whose column and row spaces
are weighted by ``A`` and ``B``, so their eigenvectors approach ``Q_A`` and ``Q_B``, and SOAP's Adam in
that eigenbasis sees a nearly diagonal problem (SOAP paper, Sec. 3: Shampoo with power 1/2 is
Adafactor in Shampoo's eigenbasis). Gradients are exact, so iterations to a tolerance measure the
preconditioner and nothing else.

Run the study (every optimizer x learning rate x seed, a few seconds on a CPU) with::

    python -m keel.core.optim.quadratic --readme experiments/core/soap/README.md

It writes the ``results:quadratic`` block of the README, ``quadratic.png`` and ``quadratic.json``
beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keel.core.report import replace_block

__all__ = ["ARMS", "KroneckerQuadratic", "iterations_to_tolerance", "main", "rotated_spd", "run_study"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def rotated_spd(size: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    """``Q diag(lambda) Q^T`` with ``lambda`` log-spaced over ``[1, condition]`` and ``Q`` Haar-random (float64)."""
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # the sign fix makes Q Haar-distributed, not just orthogonal
    return (q * torch.logspace(0.0, math.log10(condition), size, dtype=torch.float64)) @ q.T


@dataclass(frozen=True)
class KroneckerQuadratic:
    """One instance of the problem: the factors, the minimiser and the starting point (float64)."""

    a: torch.Tensor
    b: torch.Tensor
    w_star: torch.Tensor
    w0: torch.Tensor

    @classmethod
    def make(cls, rows: int = 64, cols: int = 32, condition: float = 1e3, seed: int = 0) -> KroneckerQuadratic:
        """A random instance; the same ``seed`` gives the same problem to every optimizer."""
        if rows < 1 or cols < 1 or not condition >= 1.0:
            raise ValueError(f"need rows, cols >= 1 and condition >= 1; got {rows}, {cols}, {condition}")
        generator = torch.Generator().manual_seed(seed)
        a, b = rotated_spd(rows, condition, generator), rotated_spd(cols, condition, generator)
        w_star = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        return cls(a, b, w_star, torch.randn(rows, cols, generator=generator, dtype=torch.float64))

    def loss(self, w: torch.Tensor) -> float:
        """``L(W)``."""
        error = w - self.w_star
        return 0.5 * float(torch.trace(error.T @ self.a @ error @ self.b))

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """``dL/dW = A (W - W*) B``."""
        return self.a @ (w - self.w_star) @ self.b


def iterations_to_tolerance(
    problem: KroneckerQuadratic, factory: OptimizerFactory, tolerance: float = 1e-6, max_iterations: int = 5000
) -> tuple[float, list[float]]:
    """Optimizer steps until ``L(W) / L(W0) < tolerance``, and the relative loss at every iteration.

    Returns:
        ``(iterations, curve)``; ``iterations`` is ``inf`` when the tolerance is not reached (or the
        loss diverges) within ``max_iterations``.
    """
    weight = nn.Parameter(problem.w0.clone())
    optimizer = factory([weight])
    initial = problem.loss(problem.w0)
    curve: list[float] = []
    for iteration in range(max_iterations + 1):
        with torch.no_grad():
            relative = problem.loss(weight) / initial
        curve.append(relative)
        if relative < tolerance:
            return float(iteration), curve
        if not math.isfinite(relative) or relative > 1e6:
            break
        weight.grad = problem.gradient(weight.detach())
        optimizer.step()
    return math.inf, curve


def _adamw(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.0)


def _soap(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    from keel.core.optim import SOAP

    return SOAP(params, lr=lr, betas=(0.95, 0.95), weight_decay=0.0, precondition_frequency=10)


def _shampoo(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    from keel.core.optim import Shampoo

    return Shampoo(params, lr=lr, betas=(0.95, 0.95), weight_decay=0.0, precondition_frequency=10)


# Same betas (SOAP's defaults), no weight decay, preconditioners refreshed every 10 steps.
ARMS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adamw": _adamw, "soap": _soap, "shampoo": _shampoo}
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def run_study(
    seeds: Sequence[int] = (0, 1, 2),
    learning_rates: Sequence[float] = LEARNING_RATES,
    rows: int = 64,
    cols: int = 32,
    condition: float = 1e3,
    tolerance: float = 1e-6,
    max_iterations: int = 5000,
    progress: bool = True,
) -> dict[str, Any]:
    """Every arm x learning rate x seed; the best learning rate per arm by median iterations.

    Returns:
        ``{"grid": {arm: {lr: [iterations per seed]}}, "best": {arm: lr}, "curves": {arm: [curve per
        seed at the best lr]}, "settings": {...}}``.
    """
    from rich.progress import track

    problems = [KroneckerQuadratic.make(rows, cols, condition, seed) for seed in seeds]
    jobs = [(arm, lr) for arm in ARMS for lr in learning_rates]
    grid: dict[str, dict[float, list[float]]] = {arm: {} for arm in ARMS}
    curves: dict[tuple[str, float], list[list[float]]] = {}
    for arm, lr in track(jobs, description="quadratic", disable=not progress):
        results = [
            iterations_to_tolerance(problem, partial(ARMS[arm], lr=lr), tolerance, max_iterations)
            for problem in problems
        ]
        grid[arm][lr] = [iterations for iterations, _ in results]
        curves[arm, lr] = [curve for _, curve in results]
    best = {arm: min(learning_rates, key=lambda lr, arm=arm: statistics.median(grid[arm][lr])) for arm in ARMS}
    settings = {
        "rows": rows,
        "cols": cols,
        "condition": condition,
        "tolerance": tolerance,
        "max_iterations": max_iterations,
        "seeds": list(seeds),
    }
    return {
        "grid": grid,
        "best": best,
        "curves": {arm: curves[arm, best[arm]] for arm in ARMS},
        "settings": settings,
    }


def _shown(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.0f}"


def report(study: dict[str, Any], command: str, claim_ratio: float = 0.6) -> str:
    """The Markdown results: best setting per arm with the ratio to AdamW, the full grid and a verdict."""
    grid, best, settings = study["grid"], study["best"], study["settings"]
    reference = statistics.median(grid["adamw"][best["adamw"]])
    lines = [
        f"Produced by `{command}`: W is {settings['rows']} x {settings['cols']}, A and B have condition "
        f"number {settings['condition']:g} (the Hessian's is its square), seeds {settings['seeds']}; iterations "
        f"until L/L0 < {settings['tolerance']:g} (at most {settings['max_iterations']}), each optimizer at "
        "the learning rate with the fewest median iterations.",
        "",
        "| optimizer | best lr | iterations (per seed) | median | ratio to AdamW |",
        "|---|---|---|---|---|",
    ]
    ratios = {}
    for arm in ARMS:
        median = statistics.median(grid[arm][best[arm]])
        ratios[arm] = median / reference if math.isfinite(median) and math.isfinite(reference) else None
        per_seed = ", ".join(_shown(v) for v in grid[arm][best[arm]])
        ratio = f"{ratios[arm]:.2f}" if ratios[arm] is not None else "-"
        lines.append(f"| {arm} | {best[arm]:g} | {per_seed} | {_shown(median)} | {ratio} |")
    rates = sorted({lr for arm in ARMS for lr in grid[arm]})
    lines += ["", "Median iterations at every learning rate:", ""]
    lines += ["| optimizer | " + " | ".join(f"{lr:g}" for lr in rates) + " |", "|---|" + "---|" * len(rates)]
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(_shown(statistics.median(grid[arm][lr])) for lr in rates) + " |")
    ratio = ratios["soap"]
    if ratio is None:
        verdict = "**not reproduced**: SOAP did not reach the tolerance in every seed."
    elif ratio <= claim_ratio:
        verdict = (
            f"**reproduced**: SOAP needs {ratio:.2f}x AdamW's iterations ({1 - ratio:.0%} fewer; "
            "claim: over 40% fewer)."
        )
    else:
        verdict = f"**not reproduced**: SOAP needs {ratio:.2f}x AdamW's iterations (claim: over 40% fewer)."
    lines += ["", f"Verdict: {verdict}", "", "![relative loss, best learning rate per optimizer](quadratic.png)"]
    return "\n".join(lines)


def plot(study: dict[str, Any], out: Path) -> None:
    """Relative loss against iteration, one line per seed, at each optimizer's best learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for index, (arm, curves) in enumerate(study["curves"].items()):
        for seed_index, curve in enumerate(curves):
            label = f"{arm} (lr {study['best'][arm]:g})" if seed_index == 0 else None
            axes.semilogy(range(len(curve)), curve, color=colours(index), alpha=0.8, label=label)
    axes.axhline(study["settings"]["tolerance"], color="grey", linestyle="--", linewidth=1, label="tolerance")
    axes.set_xlabel("iteration")
    axes.set_ylabel("L(W) / L(W0)")
    axes.set_title("rotated Kronecker quadratic")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keel.core.optim.quadratic``: run the study, print it, and fill the README block."""
    parser = argparse.ArgumentParser(prog="python -m keel.core.optim.quadratic", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, help="README with a results:quadratic block to fill")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=32)
    parser.add_argument("--condition", type=float, default=1e3)
    parser.add_argument("--max-iterations", type=int, default=5000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small matrices: threads cost more than they save
    study = run_study(
        args.seeds, rows=args.rows, cols=args.cols, condition=args.condition, max_iterations=args.max_iterations
    )
    command = "python -m keel.core.optim.quadratic" + (f" --readme {args.readme}" if args.readme else "")
    text = report(study, command)
    print(text)
    if args.readme is not None:
        replace_block(args.readme, text, name="quadratic")
        plot(study, args.readme.parent / "quadratic.png")
        summary = {key: study[key] for key in ("grid", "best", "settings")}
        summary["grid"] = {arm: {f"{lr:g}": v for lr, v in rates.items()} for arm, rates in summary["grid"].items()}
        (args.readme.parent / "quadratic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
