"""Per-step overhead of ``keel run`` over a plain PyTorch training loop.

Both sides train the same small GPT (Hugging Face GPT-2 architecture, built from a config) on the
same token batches with the same AdamW settings, in this one process, interleaved (plain, keel,
plain, keel ...) so that machine noise hits both alike. The keel side goes through the full
runtime: config merge and checks, run directory, Lightning Trainer with keel's standard callbacks
(progress bar, throughput, RNG state, loss guard, LR monitor, CSV logging). Step times are taken
between consecutive batch ends; the first ``warmup`` steps of each repetition are dropped.

Prints a table and the ratio keel / plain (target: at most 1.05), and writes JSON.

Usage: python packages/core/benchmarks/overhead.py [--steps 60] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from keel.core.runner import fit, resolve_run
from keel.core.tasks import build_causal_lm
from keel.core.testing import RandomTokenDataset

MODEL = {"model_type": "gpt2", "vocab_size": 2048, "n_positions": 128, "n_layer": 4, "n_head": 4, "n_embd": 128}
BATCH, LENGTH, LR = 16, 128, 1e-3

CONFIG = """\
description: overhead benchmark
seed: 0
model:
  _target_: keel.core.tasks.CausalLMModule
  split_weight_decay: false
  model:
    _target_: keel.core.tasks.build_causal_lm
    model_type: gpt2
    vocab_size: {vocab_size}
    n_positions: {n_positions}
    n_layer: {n_layer}
    n_head: {n_head}
    n_embd: {n_embd}
  optimizer:
    _target_: torch.optim.AdamW
    _partial_: true
    lr: {lr}
data:
  _target_: keel.core.testing.BoringDataModule
  size: {size}
  length: {length}
  vocab_size: {vocab_size}
  batch_size: {batch}
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {steps}
  limit_val_batches: 0
  log_every_n_steps: 10
checkpoint:
  every_n_train_steps: 100000
  monitor: null
logging:
  tensorboard: false
  progress_bar: plain
callbacks:
  - _target_: keel.core.testing.StepTimer
"""


def plain_loop(steps: int) -> list[float]:
    """Train with a hand-written loop; returns the time of every step."""
    L.seed_everything(0, verbose=False)
    model = build_causal_lm(**MODEL)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    data = RandomTokenDataset(size=BATCH * steps, length=LENGTH, vocab_size=MODEL["vocab_size"], seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)
    times, last = [], time.perf_counter()
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def keel_run(steps: int, workdir: Path) -> list[float]:
    """Train through keel's runtime; returns the time of every step."""
    from keel.core.testing import StepTimer

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "overhead.yaml"
    config.write_text(CONFIG.format(**MODEL, lr=LR, size=BATCH * steps, length=LENGTH, batch=BATCH, steps=steps))
    os.environ["KEEL_RUNS_DIR"] = str(workdir / "runs")
    os.environ.pop("KEEL_RUN_DIR", None)
    run_dir, cfg = resolve_run(str(config), [], tiny=False)
    StepTimer.last_times = []
    fit(cfg, run_dir)
    return list(StepTimer.last_times)


def main() -> None:
    """Run the interleaved comparison and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=os.environ.get("KEEL_BENCH_DIR", "benchmarks-results"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plain, keel = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            plain.extend(plain_loop(args.steps)[args.warmup :])
            keel.extend(keel_run(args.steps, Path(tmp) / f"r{repeat}")[args.warmup :])
    result = {
        "benchmark": "overhead",
        "model": MODEL,
        "batch": BATCH,
        "sequence": LENGTH,
        "steps_measured": len(plain),
        "plain_median_s": statistics.median(plain),
        "keel_median_s": statistics.median(keel),
        "plain_mean_s": statistics.fmean(plain),
        "keel_mean_s": statistics.fmean(keel),
        "threads": torch.get_num_threads(),
    }
    result["ratio_median"] = result["keel_median_s"] / result["plain_median_s"]
    result["ratio_mean"] = result["keel_mean_s"] / result["plain_mean_s"]
    result["target"] = 1.05
    result["meets_target"] = result["ratio_median"] <= result["target"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nper-step time over {len(plain)} steps each (plain PyTorch loop vs keel run, same process)")
    print(f"  plain  median {result['plain_median_s'] * 1e3:8.2f} ms   mean {result['plain_mean_s'] * 1e3:8.2f} ms")
    print(f"  keel   median {result['keel_median_s'] * 1e3:8.2f} ms   mean {result['keel_mean_s'] * 1e3:8.2f} ms")
    print(f"  ratio  median {result['ratio_median']:.3f}x   mean {result['ratio_mean']:.3f}x   (target <= 1.05x)")
    print(f"wrote {out / 'overhead.json'}")


if __name__ == "__main__":
    main()
