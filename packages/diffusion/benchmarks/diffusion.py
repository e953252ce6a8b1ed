"""Sampling cost of keel's diffusion code against plain diffusers, and NUWA-XL's parallel speed-up.

1. ``DiffusionModule.sample`` (keel's loop, model function and guidance plumbing) against the plain
   diffusers loop on the very same ``UNet2DModel`` and scheduler (``set_timesteps``; for each t:
   ``unet(x, t).sample`` then ``scheduler.step``), interleaved (plain, keel, plain, keel ...) so that
   machine noise hits both alike. Both use the online weights and the same noise. Target: keel / plain
   <= 1.05.
2. NUWA-XL: a 1,024-frame video generated coarse-to-fine in parallel and autoregressively with the
   same (untrained) models, from ``keel diffusion nuwa-bench``: sequential denoising loops and seconds.

Prints a table, writes ``diffusion.json`` and puts the figures into the package README (the block
``<!-- results:bench:start -->`` ... ``<!-- results:bench:end -->``), so no figure there is typed by
hand; ``--render-only diffusion.json`` rewrites that block from a saved result.

Usage: python packages/diffusion/benchmarks/diffusion.py [--device cpu|cuda] [--steps 25] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from functools import partial
from pathlib import Path

import torch

from keel.core.report import replace_block
from keel.core.testing.timing import measured_on, run_facts, seconds
from keel.diffusion.module import DiffusionModule
from keel.diffusion.nn.unet import build_unet
from keel.diffusion.sampling import make_scheduler, training_scheduler


@torch.no_grad()
def plain_diffusers_loop(unet: torch.nn.Module, scheduler, noise: torch.Tensor, steps: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The sampling loop as diffusers' own pipelines write it."""
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def sampling_overhead(device: str, steps: int, repeats: int, batch: int, size: int) -> dict:
    """Median seconds per sampling call of keel and of the plain loop, and their ratio."""
    torch.manual_seed(0)
    unet = build_unet(size, 1, block_out_channels=(32, 64, 64), attention_levels=(2,), norm_num_groups=8)
    module = DiffusionModule(unet, partial(torch.optim.AdamW, lr=1e-4), ema_decay=0.0).to(device).eval()
    scheduler = make_scheduler("ddim", training_scheduler())
    noise = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    keel_out = module.sample(batch, sampler="ddim", steps=steps, generator=torch.Generator().manual_seed(0))
    plain_out = plain_diffusers_loop(unet, scheduler, noise, steps).clamp(-1, 1)
    same = torch.allclose(keel_out.to(device), plain_out, atol=1e-4)  # same noise: the same samples
    plain_times, keel_times = [], []
    for _ in range(repeats):
        plain_times.append(seconds(lambda: plain_diffusers_loop(unet, scheduler, noise, steps)))
        keel_times.append(seconds(lambda: module.sample(batch, sampler="ddim", steps=steps)))
    plain, keel = statistics.median(plain_times), statistics.median(keel_times)
    return {
        "batch": batch, "image_size": size, "steps": steps, "repeats": repeats,
        "plain_seconds": plain, "keel_seconds": keel, "ratio": keel / plain, "target": 1.05,
        "same_samples": bool(same),
    }  # fmt: skip


def nuwa_parallel_vs_autoregressive(device: str, frames: int) -> dict:
    """The JSON line of ``keel diffusion nuwa-bench --tiny --frames N`` as a dict."""
    import contextlib
    import io

    from keel.diffusion.nuwa_xl.bench import main as nuwa_bench

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        nuwa_bench(["--frames", str(frames), "--tiny", "--device", device])
    result = json.loads(buffer.getvalue().strip().splitlines()[-1])
    result["ratio_seconds"] = result["seconds_parallel"] / result["seconds_autoregressive"]
    return result


def markdown(result: dict) -> str:
    """The README table of one result of this benchmark."""
    sampling, nuwa = result["sampling"], result["nuwa_xl"]
    return "\n".join([
        measured_on(result, "nox -s bench -- diffusion"),
        "",
        "| | plain / autoregressive | keel / NUWA-XL parallel | ratio |",
        "|---|---:|---:|---:|",
        f"| sampling {sampling['batch']} images of {sampling['image_size']}x{sampling['image_size']}, DDIM "
        f"{sampling['steps']} steps (median of {sampling['repeats']}) | {sampling['plain_seconds']:.2f} s "
        f"| {sampling['keel_seconds']:.2f} s | **{sampling['ratio']:.3f}** (target <= {sampling['target']}); "
        f"identical samples: {'yes' if sampling['same_samples'] else 'NO'} |",
        f"| NUWA-XL, {nuwa['frames']:,} frames, tiny untrained models: sequential loops "
        f"| {nuwa['loops_autoregressive']} | {nuwa['loops_parallel']} | |",
        f"| NUWA-XL, {nuwa['frames']:,} frames: seconds | {nuwa['seconds_autoregressive']:.1f} "
        f"| {nuwa['seconds_parallel']:.1f} | {nuwa['ratio_seconds']:.3f} |",
    ])  # fmt: skip


def main() -> None:
    """Run both benchmarks, print the table, write JSON and the README block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--out", default=os.environ.get("KEEL_BENCH_DIR", "benchmarks-results"))
    parser.add_argument("--readme", default=str(Path(__file__).parents[1] / "README.md"), help="'' leaves it alone")
    parser.add_argument("--render-only", metavar="JSON", help="only rewrite the README block from a saved result")
    args = parser.parse_args()
    if args.render_only:
        replace_block(Path(args.readme), markdown(json.loads(Path(args.render_only).read_text())), name="bench")
        return
    facts = run_facts(args.device)  # before any work: the load average is the machine's other work
    sampling = sampling_overhead(args.device, args.steps, args.repeats, args.batch, args.size)
    print(f"sampling {args.batch} images of {args.size}x{args.size}, DDIM {args.steps} steps on {args.device}:")
    print(f"  plain diffusers loop {sampling['plain_seconds']:.3f} s, keel DiffusionModule.sample "
          f"{sampling['keel_seconds']:.3f} s: ratio {sampling['ratio']:.3f} (target <= 1.05), "
          f"identical samples: {sampling['same_samples']}")  # fmt: skip
    nuwa = nuwa_parallel_vs_autoregressive(args.device, args.frames)
    print(f"NUWA-XL {nuwa['frames']} frames: parallel {nuwa['loops_parallel']} loops, "
          f"{nuwa['seconds_parallel']:.1f} s; autoregressive {nuwa['loops_autoregressive']} loops, "
          f"{nuwa['seconds_autoregressive']:.1f} s; time ratio {nuwa['ratio_seconds']:.3f}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {**facts, "sampling": sampling, "nuwa_xl": nuwa}
    (out / "diffusion.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'diffusion.json'}")
    if args.readme:
        replace_block(Path(args.readme), markdown(result), name="bench")
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
