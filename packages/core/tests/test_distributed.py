"""Multi-process runs on CPU over gloo: same step as one process, one run directory for all ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from keel.core.testing import RunIf
from keel.core.testing.plugin import BORING_YAML

# One optimizer step, no dropout, so a 2-process step and a 1-process step over the same global
# batch must agree. The global batch is 4: one process with batch 4, or two with batch 2 each.
DDP_YAML = (
    BORING_YAML.replace("max_steps: 8", "max_steps: 1")
    .replace("hidden: 16", "hidden: 16\n  dropout: 0.0")
    .replace("val_check_interval: 4", "limit_val_batches: 0")
    + "callbacks:\n  - _target_: keel.core.testing.GradientRecorder\n"
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "KEEL_RUNS_DIR": str(tmp_path / "runs"), "CI": "1", "OMP_NUM_THREADS": "1"}
    env.pop("KEEL_RUN_DIR", None)
    return env


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _single_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run directory shared by all ranks, found {runs}"
    return runs[0]


def _compare(single_dir: Path, ddp_dir: Path) -> None:
    single = torch.load(single_dir / "grads-rank0.pt", weights_only=True)
    ranks = [torch.load(ddp_dir / f"grads-rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert single["world_size"] == 1
    # the global loss is the mean of the per-rank means (equal per-rank batch sizes)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single["loss"], rtol=1e-6, atol=1e-6)
    assert not torch.equal(ranks[0]["loss"], ranks[1]["loss"]), "ranks must have seen different halves of the batch"
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ranks[1]["grads"][name], grad, rtol=1e-5, atol=1e-7)


@RunIf(distributed=True, linux=True)
def test_ddp_two_processes_match_one_process_and_share_the_run_dir(tmp_path: Path) -> None:
    config = tmp_path / "ddp.yaml"
    config.write_text(DDP_YAML)
    env = _env(tmp_path)
    base = [sys.executable, "-m", "keel.core", "run", str(config)]
    _run([*base, "data.batch_size=4", "run.name=single"], env)
    # Lightning launches the second rank itself by re-running the command: it must reuse rank 0's run dir.
    out = _run([*base, "data.batch_size=2", "trainer.devices=2", "trainer.strategy=ddp", "run.name=ddp"], env)
    root = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in root.iterdir()) == ["ddp", "single"]
    assert out.count("run_dir:") == 2, "only rank 0 prints the run directory (at start and end)"
    assert (root / "ddp" / "grads-rank1.pt").exists(), "rank 1 wrote outside the shared run directory"
    _compare(root / "single", root / "ddp")


@RunIf(distributed=True, linux=True)
def test_torchrun_ranks_share_run_dir_and_config(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed beside this Python")
    config = tmp_path / "ddp.yaml"
    config.write_text(DDP_YAML)
    env = _env(tmp_path)
    _run([sys.executable, "-m", "keel.core", "run", str(config), "data.batch_size=4", "run.name=single"], env)
    # No run.name: each rank would derive its own timestamped folder if the run dir were not shared.
    command = [torchrun, "--standalone", "--nproc-per-node=2", "-m", "keel.core", "run", str(config)]
    _run([*command, "data.batch_size=2", "trainer.devices=2", "trainer.strategy=ddp"], env)
    root = tmp_path / "runs" / "ddp"
    shared = [p for p in root.iterdir() if p.name != "single"]
    assert len(shared) == 1, f"torchrun ranks created {len(shared)} run directories"
    run_dir = shared[0]
    assert (run_dir / "resolved.yaml").read_text().count("run:") == 1
    assert (run_dir / "grads-rank0.pt").exists()
    assert (run_dir / "grads-rank1.pt").exists()
    _compare(root / "single", run_dir)


@RunIf(distributed=True, linux=True)
def test_slurm_launched_ranks_share_run_dir_and_config(tmp_path: Path) -> None:
    """Two processes started the way `srun --ntasks 2` starts them (no launcher passes anything between them)."""
    config = tmp_path / "ddp.yaml"
    config.write_text(DDP_YAML)
    env = _env(tmp_path)
    _run([sys.executable, "-m", "keel.core", "run", str(config), "data.batch_size=4", "run.name=single"], env)
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "keel-test",
        "SLURM_NODELIST": "127.0.0.1",
    }
    command = [sys.executable, "-m", "keel.core", "run", str(config), "data.batch_size=2", "trainer.devices=2"]
    command.append("trainer.strategy=ddp")
    ranks = [
        subprocess.Popen(
            command,
            env={**env, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    for rank, (out, err) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, out[-2000:] + err[-3000:]
    root = tmp_path / "runs" / "ddp"
    shared = [p for p in root.iterdir() if p.name != "single"]
    assert len(shared) == 1, f"SLURM ranks created {len(shared)} run directories"
    _compare(root / "single", shared[0])
