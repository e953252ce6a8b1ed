"""``keel diffusion nuwa-bench``: NUWA-XL's latency claim, measured on this machine.

Builds an MTD network (untrained: the number of loops and the time per loop do not depend on the
weights), generates one N-frame video with NUWA-XL's parallel coarse-to-fine tree and one with the
autoregressive baseline on the same device, and prints, as the LAST line of stdout, one JSON object::

    {
        "frames": 1024,
        "loops_parallel": 3,
        "loops_autoregressive": 93,
        "seconds_parallel": ...,
        "seconds_autoregressive": ...,
    }

Loops are denoising loops that must run one after another (hardware-independent); seconds are
wall-clock. The paper reports 7.55 min -> 26 s (94.26% less) for 1,024 frames on the same hardware.

Networks: ``--tiny`` is a small network on 16x16 frames with L = 5 (a quick smoke test); the default
is the network of the CPU experiment (``experiments/diffusion/nuwa_xl``, sweep profile ``cpu``):
L = 12 frames of 32x32, UNet widths (32, 64, 64) with attention at 8x8.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from keel.core.errors import ConfigError
from keel.diffusion.nuwa_xl.inference import generate_autoregressive, generate_parallel
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.sampling import make_scheduler, training_scheduler

NETWORKS = {
    "tiny": {
        "frames": 5,
        "sample_size": 16,
        "block_out_channels": (16, 32),
        "attention_levels": (),
        "norm_num_groups": 8,
    },
    "cpu": {
        "frames": 12,
        "sample_size": 32,
        "block_out_channels": (32, 64, 64),
        "attention_levels": (2,),
        "norm_num_groups": 16,
    },
}


USAGE = "keel diffusion nuwa-bench --frames N [--tiny] [--device cpu|cuda] [--steps S] [--chunk-size C] [--seed S]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"nuwa-bench: {message}; usage: {USAGE}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the command line.

    Raises:
        ConfigError: Unknown or invalid arguments, or a CUDA device that is not there.
    """
    parser = _Parser(prog="keel diffusion nuwa-bench", usage=USAGE, description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, required=True, help="frames of the generated video (N)")
    parser.add_argument("--tiny", action="store_true", help="a small network (quick smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every CUDA device shares the parallel loops)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per loop (default 25; 5 with --tiny)")
    parser.add_argument("--chunk-size", type=int, default=None, help="at most this many clips per batched loop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the noise")
    args = parser.parse_args(list(argv))
    if args.frames < 2:
        raise ConfigError(f"nuwa-bench: --frames must be at least 2, got {args.frames}")
    args.steps = args.steps if args.steps is not None else (5 if args.tiny else 25)
    if args.steps < 1:
        raise ConfigError(f"nuwa-bench: --steps must be at least 1, got {args.steps}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigError(f"nuwa-bench: --chunk-size must be at least 1, got {args.chunk_size}")
    if args.device not in {"cpu", "cuda"}:
        raise ConfigError(f"nuwa-bench: --device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("nuwa-bench: --device cuda but no CUDA device is visible; use --device cpu")
    return args


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: Sequence[str]) -> int:
    """Run the benchmark; the last stdout line is the JSON result."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    network = MaskedTemporalUNet(**NETWORKS["tiny" if args.tiny else "cpu"]).eval()
    devices = [torch.device("cpu")]
    if args.device == "cuda":
        devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    network.to(devices[0])
    sampler = make_scheduler("ddim", training_scheduler(), clip_sample=True)
    plan = torch.zeros(args.frames, dtype=torch.int64)
    # warm both paths up (allocator, kernels) so neither timing includes first-call set-up
    generate_parallel(network, sampler, network.frames, 1, plan, devices=devices)
    generate_autoregressive(network, sampler, network.frames + 1, 1, plan)
    _synchronise(args.device)
    started = time.perf_counter()
    parallel = generate_parallel(network, sampler, args.frames, args.steps, plan, args.seed, args.chunk_size, devices)
    _synchronise(args.device)
    seconds_parallel = time.perf_counter() - started
    started = time.perf_counter()
    autoregressive = generate_autoregressive(network, sampler, args.frames, args.steps, plan, args.seed)
    _synchronise(args.device)
    seconds_autoregressive = time.perf_counter() - started
    print(
        f"nuwa-bench: {args.frames} frames, L={network.frames}, {args.steps} steps per loop on "
        f"{len(devices)} x {args.device}; parallel {parallel.clips} clips in {parallel.sequential_loops} loops, "
        f"autoregressive {autoregressive.clips} clips in {autoregressive.sequential_loops} loops; "
        f"time reduction {100 * (1 - seconds_parallel / seconds_autoregressive):.1f}%",
        flush=True,
    )
    result = {
        "frames": args.frames,
        "loops_parallel": parallel.sequential_loops,
        "loops_autoregressive": autoregressive.sequential_loops,
        "seconds_parallel": round(seconds_parallel, 4),
        "seconds_autoregressive": round(seconds_autoregressive, 4),
    }
    print(json.dumps(result), flush=True)
    return 0
