# /// script
# dependencies = ["pytorch-optimizer"]
# ///
"""Per-step time and memory of keel's Sophia and SOAP against AdamW and pytorch-optimizer's versions.

Every optimizer trains the same small GPT (Hugging Face GPT-2 architecture built from a config, about
11M parameters) on the same random token batches, in this one process, interleaved across repetitions
(A, B, C, A, B, C ...) so that machine noise hits all alike:

- ``AdamW``: torch's, ``foreach=True`` (the baseline of every ratio);
- ``SophiaG``: keel's, with the official loop's Hessian refresh every ``k = 10`` steps (after that
  step's update: a second forward on the same batch, labels sampled from the logits, backward,
  gradient clipping to norm 1, ``update_hessian()``), and ``step(bs=tokens)``;
- ``SophiaH``: keel's and pytorch-optimizer's (Hutchinson estimate, refreshed every 10 steps).
  pytorch-optimizer has no SophiaG, so keel's SophiaG has no counterpart there and the Sophia
  comparison between the two packages is SophiaH against SophiaH. keel's takes the estimate from the
  step's loss (``update_hessian(loss)``, then the usual backward); pytorch-optimizer's needs
  ``loss.backward(create_graph=True)`` on refresh steps and computes the estimate inside ``step()``.
  Their hyperparameters are matched (pytorch-optimizer clips the update to ``p`` instead of 1, so
  its ``lr`` is keel's divided by ``p``). On refresh steps both run attention with SDPA's math
  kernel: the fused kernels have no double backward on CUDA.
- ``SOAP``: keel's and pytorch-optimizer's, same hyperparameters, preconditioning frequency 10. The
  first step of each run only builds the preconditioner, so it falls in the warm-up.

Time: each step is timed whole (forward, backward, optimizer step, the Hessian refresh on refresh
steps) and for the optimizer alone (``step()`` plus ``update_hessian``; for keel's SophiaH that
includes the Hessian-vector product, for pytorch-optimizer's SophiaH its ``step()`` does it). After the
warm-up, the steps are cut into windows of 10 consecutive steps; every window holds exactly one
Hessian or eigenbasis refresh, so a window's mean is the amortised per-step cost. Medians over all
windows of all repetitions are reported. Memory: the bytes of the tensors in ``optimizer.state``,
and on CUDA ``torch.cuda.max_memory_allocated`` over a run (model, gradients, activations and state).
Each run's loss on a held-out batch must be finite, or the script exits 1; timing targets are printed
with PASS/FAIL beside the measured ratios but never change the exit status.

Usage: python packages/core/benchmarks/optim.py [--device cpu|cuda] [--steps 20] [--repeats 2] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytorch_optimizer
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from keel.core.optim import SOAP, SophiaG, SophiaH
from keel.core.optim.sophia import sampled_label_loss
from keel.core.tasks import build_causal_lm

# Vocabulary above SOAP's max_precond_dim (10000), so the embedding is preconditioned on one side only,
# as with real tokenizers. Width 256 keeps SOAP's per-step matmuls affordable on a CPU.
MODEL = {"model_type": "gpt2", "vocab_size": 16384, "n_positions": 256, "n_layer": 8, "n_head": 4, "n_embd": 256}
PERIOD = 10  # Sophia's k and SOAP's precondition_frequency
SEED = 0
# Per device: measured steps, repetitions, warm-up steps, batch size, sequence length.
DEFAULTS = {
    "cpu": {"steps": 20, "repeats": 2, "warmup": 3, "batch": 4, "length": 32},
    "cuda": {"steps": 100, "repeats": 5, "warmup": 10, "batch": 16, "length": 256},
}
SOPHIA_H = {"lr": 1e-3, "rho": 0.01, "betas": (0.965, 0.99), "weight_decay": 0.1}
SOAP_ARGS = {"lr": 3e-3, "betas": (0.95, 0.95), "weight_decay": 0.01, "precondition_frequency": PERIOD}
BASELINE = "AdamW (torch)"


@dataclass(frozen=True)
class Contender:
    """One optimizer under test.

    Attributes:
        name: Label in the table and the JSON.
        make: Builds the optimizer from the model's parameters.
        refresh: How its Hessian is refreshed: ``""`` (never, or inside ``step()``), ``"gnb"`` (keel's
            SophiaG), ``"hutchinson"`` (keel's SophiaH) or ``"create_graph"`` (pytorch-optimizer's SophiaH).
        offset: Refresh on the 0-based steps ``s`` with ``s % PERIOD == offset``.
    """

    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    refresh: str = ""
    offset: int = PERIOD - 1


CONTENDERS = (
    Contender(BASELINE, lambda p: torch.optim.AdamW(p, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)),
    Contender(
        "SophiaG (keel)",
        lambda p: SophiaG(p, lr=3e-4, betas=(0.965, 0.99), rho=0.05, weight_decay=0.2, update_period=PERIOD),
        "gnb",
    ),
    Contender("SophiaH (keel)", lambda p: SophiaH(p, **SOPHIA_H, update_period=PERIOD), "hutchinson"),
    Contender(
        "SophiaH (pytorch-optimizer)",
        lambda p: pytorch_optimizer.SophiaH(
            p,
            lr=SOPHIA_H["lr"] / SOPHIA_H["rho"],
            p=SOPHIA_H["rho"],
            betas=SOPHIA_H["betas"],
            weight_decay=SOPHIA_H["weight_decay"] * SOPHIA_H["rho"],
            update_period=PERIOD,
        ),
        "create_graph",
        offset=0,  # it refreshes on its 1st, 11th, 21st ... step
    ),
    Contender("SOAP (keel)", lambda p: SOAP(p, **SOAP_ARGS)),
    Contender("SOAP (pytorch-optimizer)", lambda p: pytorch_optimizer.SOAP(p, **SOAP_ARGS)),
)
# (label, contender, baseline, limit): contender's time / baseline's time must be at most limit.
TARGETS = (
    ("SophiaG <= 1.15x AdamW", "SophiaG (keel)", BASELINE, 1.15),
    ("SOAP <= 2x AdamW (frequency 10)", "SOAP (keel)", BASELINE, 2.0),
    ("SOAP not slower than pytorch-optimizer's", "SOAP (keel)", "SOAP (pytorch-optimizer)", 1.0),
    (
        "SophiaH not slower than pytorch-optimizer's (it has no SophiaG)",
        "SophiaH (keel)",
        "SophiaH (pytorch-optimizer)",
        1.0,
    ),
)


@dataclass
class Run:
    """What one training run of one contender measured."""

    full: list[float]
    opt: list[float]
    state_bytes: int
    peak_bytes: int | None
    loss: float


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Sum of ``nbytes`` of every tensor in ``optimizer.state``, nested lists and dicts included."""

    def tensors(value: Any) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from tensors(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from tensors(item)

    return sum(t.nbytes for t in tensors(list(optimizer.state.values())))


def train(contender: Contender, batches: torch.Tensor, held_out: torch.Tensor, device: torch.device) -> Run:
    """Train a fresh model with one contender on ``batches``; time every step."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(SEED)
    model = build_causal_lm(**MODEL).to(device)
    model.train()
    params = list(model.parameters())
    optimizer = contender.make(params)
    generator = torch.Generator(device=device)
    full, opt = [], []
    for step, batch in enumerate(batches):
        refresh = bool(contender.refresh) and step % PERIOD == contender.offset
        math_attention = refresh and contender.refresh in ("hutchinson", "create_graph")
        sync()
        start = time.perf_counter()
        opt_time = 0.0
        with sdpa_kernel(SDPBackend.MATH) if math_attention else nullcontext():
            loss = model(input_ids=batch, labels=batch).loss
        if refresh and contender.refresh == "hutchinson":
            sync()
            tick = time.perf_counter()
            optimizer.update_hessian(loss)
            sync()
            opt_time += time.perf_counter() - tick
        loss.backward(create_graph=refresh and contender.refresh == "create_graph")
        sync()
        tick = time.perf_counter()
        if contender.refresh == "gnb":
            optimizer.step(bs=batch.numel())
        else:
            optimizer.step()
        sync()
        opt_time += time.perf_counter() - tick
        optimizer.zero_grad(set_to_none=True)
        if refresh and contender.refresh == "gnb":
            generator.manual_seed(step)
            sampled, _ = sampled_label_loss(model(input_ids=batch).logits, generator=generator)
            sampled.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            sync()
            tick = time.perf_counter()
            optimizer.update_hessian()
            sync()
            opt_time += time.perf_counter() - tick
            optimizer.zero_grad(set_to_none=True)
        sync()
        full.append(time.perf_counter() - start)
        opt.append(opt_time)
    model.eval()
    with torch.no_grad():
        held_out_loss = float(model(input_ids=held_out, labels=held_out).loss)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    run = Run(full, opt, state_bytes(optimizer), peak, held_out_loss)
    del model, params, optimizer, loss
    gc.collect()
    return run


def windows(times: list[float], warmup: int) -> list[float]:
    """Mean time per step of each window of ``PERIOD`` consecutive steps after the warm-up."""
    measured = times[warmup:]
    return [statistics.fmean(measured[i : i + PERIOD]) for i in range(0, len(measured) - PERIOD + 1, PERIOD)]


def parse_args() -> argparse.Namespace:
    """Command line, with per-device defaults for the options left out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=sorted(DEFAULTS))
    for name in DEFAULTS["cpu"]:
        cpu, cuda = DEFAULTS["cpu"][name], DEFAULTS["cuda"][name]
        parser.add_argument(f"--{name}", type=int, default=None, help=f"default: {cpu} (cpu), {cuda} (cuda)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch (default: torch's choice)")
    parser.add_argument("--out", default=os.environ.get("KEEL_BENCH_DIR", "benchmarks-results"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # Whole windows only: every window must hold exactly one refresh.
    args.steps = max(PERIOD, math.ceil(args.steps / PERIOD) * PERIOD)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.length > MODEL["n_positions"]:
        parser.error(f"--length must be at most {MODEL['n_positions']}")
    return args


def verdict(ratio: float, limit: float) -> str:
    return "PASS" if ratio <= limit else "FAIL"


def main() -> None:
    """Run the interleaved comparison, print the table and targets, write JSON."""
    args = parse_args()
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")  # pytorch-optimizer's SophiaH needs it
    data = torch.Generator().manual_seed(SEED)
    shape = (args.warmup + args.steps, args.batch, args.length)
    batches = torch.randint(MODEL["vocab_size"], shape, generator=data).to(device)
    held_out = torch.randint(MODEL["vocab_size"], (args.batch, args.length), generator=data).to(device)
    runs: dict[str, list[Run]] = {c.name: [] for c in CONTENDERS}
    began = time.perf_counter()
    for repeat in range(args.repeats):
        for contender in CONTENDERS:
            run = train(contender, batches, held_out, device)
            runs[contender.name].append(run)
            print(f"repeat {repeat + 1}/{args.repeats}  {contender.name:<28} {sum(run.full):7.1f} s", flush=True)
    elapsed = time.perf_counter() - began

    rows: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        full = [w for run in done for w in windows(run.full, args.warmup)]
        opt = [w for run in done for w in windows(run.opt, args.warmup)]
        peaks = [run.peak_bytes for run in done if run.peak_bytes is not None]
        rows[name] = {
            "full_step_median_s": statistics.median(full),
            "opt_step_median_s": statistics.median(opt),
            "full_step_mean_s": statistics.fmean(full),
            "opt_step_mean_s": statistics.fmean(opt),
            "windows": len(full),
            "state_bytes": done[-1].state_bytes,
            "peak_bytes": max(peaks) if peaks else None,
            "held_out_loss": [run.loss for run in done],
        }
    base = rows[BASELINE]
    for row in rows.values():
        row["full_step_ratio"] = row["full_step_median_s"] / base["full_step_median_s"]
        row["opt_step_ratio"] = row["opt_step_median_s"] / base["opt_step_median_s"]
        row["state_ratio"] = row["state_bytes"] / base["state_bytes"]
        if row["peak_bytes"] is not None:
            row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"]
    targets = []
    for label, name, against, limit in TARGETS:
        full = rows[name]["full_step_median_s"] / rows[against]["full_step_median_s"]
        opt = rows[name]["opt_step_median_s"] / rows[against]["opt_step_median_s"]
        targets.append(
            {
                "target": label,
                "limit": limit,
                "full_step_ratio": full,
                "opt_step_ratio": opt,
                "full_step_pass": full <= limit,
                "opt_step_pass": opt <= limit,
            }
        )

    torch.manual_seed(SEED)
    params = sum(p.numel() for p in build_causal_lm(**MODEL).parameters())
    result = {
        "benchmark": "optim",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pytorch_optimizer": version("pytorch-optimizer"),
        "model": MODEL,
        "parameters": params,
        "batch": args.batch,
        "sequence": args.length,
        "period": PERIOD,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "repeats": args.repeats,
        "wall_s": elapsed,
        "optimizers": rows,
        "targets": targets,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optim.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{params / 1e6:.1f}M-parameter GPT-2 on {result['device']}, batch {args.batch} x {args.length} tokens;")
    print(f"medians of {base['windows']} windows of {PERIOD} steps each (one Hessian/eigenbasis refresh per window)")
    peak_header = f" {'peak MiB':>9} {'ratio':>6}" if device.type == "cuda" else ""
    print(
        f"\n{'optimizer':<28} {'step ms':>9} {'ratio':>6} {'opt ms':>8} {'ratio':>6} {'state MiB':>9} {'ratio':>6}"
        f"{peak_header}  held-out loss"
    )
    for name, row in rows.items():
        peak = f" {row['peak_bytes'] / 2**20:9.1f} {row['peak_ratio']:5.2f}x" if row["peak_bytes"] is not None else ""
        losses = " ".join(f"{loss:.3f}" for loss in row["held_out_loss"])
        print(
            f"{name:<28} {row['full_step_median_s'] * 1e3:9.1f} {row['full_step_ratio']:5.2f}x "
            f"{row['opt_step_median_s'] * 1e3:8.2f} {row['opt_step_ratio']:5.2f}x "
            f"{row['state_bytes'] / 2**20:9.1f} {row['state_ratio']:5.2f}x{peak}  {losses}"
        )
    print("\nratios above are against AdamW; 'step' is the whole training step, 'opt' the optimizer alone")
    print("(step() + update_hessian; keel's SophiaH update_hessian includes the Hessian-vector product).")
    print("pytorch-optimizer has no SophiaG, only the Hutchinson SophiaH: it is compared with keel's SophiaH.\n")
    print(f"{'target':<66} {'whole step':>16} {'optimizer only':>16}")
    for t in targets:
        print(
            f"{t['target']:<66} {t['full_step_ratio']:5.2f}x {verdict(t['full_step_ratio'], t['limit']):>4}     "
            f"{t['opt_step_ratio']:5.2f}x {verdict(t['opt_step_ratio'], t['limit']):>4}"
        )
    print(f"\nwrote {out / 'optim.json'} ({elapsed:.0f} s of training)")
    bad = [name for name, row in rows.items() if not all(math.isfinite(x) for x in row["held_out_loss"])]
    if bad:
        raise SystemExit(f"non-finite held-out loss after training: {', '.join(bad)}")


if __name__ == "__main__":
    main()
