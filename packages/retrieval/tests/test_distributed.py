"""Cross-device negatives: two gloo processes give the single-process loss and gradients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from keel.core.testing import RunIf

SCRIPT = Path(__file__).with_name("ddp_step.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, world: int, port: int) -> list[subprocess.Popen[str]]:
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key in ("KEEL_RUN_DIR", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        base.pop(key, None)
    procs = []
    for rank in range(world):
        env = base if world == 1 else {**base, "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank)}
        command = [sys.executable, str(SCRIPT), str(out / f"rank{rank}-of-{world}.pt")]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen[str]]) -> None:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]


@RunIf(distributed=True, linux=True)
def test_two_processes_match_one_with_hard_negatives_and_a_cross_device_duplicate(tmp_path: Path) -> None:
    procs = _launch(tmp_path, 2, _free_port()) + _launch(tmp_path, 1, _free_port())
    _wait(procs)
    single = torch.load(tmp_path / "rank0-of-1.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"rank{r}-of-2.pt", weights_only=True) for r in range(2)]
    assert single["world_size"] == 1
    assert all(r["world_size"] == 2 for r in ranks)
    # the global loss is the mean of the ranks' losses (2 queries each)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single["loss"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"]), "the ranks must hold different queries"
    assert set(single["grads"]) == set(ranks[0]["grads"])
    assert "model.log_temperature" in single["grads"]
    for name, grad in single["grads"].items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
