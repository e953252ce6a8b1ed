"""Atomic checkpoint writes, weights-only loads, resume resolution and safetensors export."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from keel.core.checkpoint import AtomicCheckpointIO, export_safetensors, load_checkpoint, resolve_resume
from keel.core.errors import CheckpointError
from keel.core.testing import RunIf

WRITER = textwrap.dedent(
    """
    import sys, torch
    from keel.core.checkpoint import AtomicCheckpointIO
    # about 400 MB: slow enough to be killed while the bytes are still being written
    big = {"state_dict": {"w": torch.randn(100_000_000)}, "global_step": 2}
    print("writing", flush=True)
    AtomicCheckpointIO().save_checkpoint(big, sys.argv[1])
    """
)


@RunIf(linux=True)
def test_kill_during_checkpoint_write_leaves_previous_last_intact(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, last)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(last)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 60
    temp = None
    while time.time() < deadline:  # wait until the temporary file has some bytes in it
        temps = list(last.parent.glob(".last.ckpt.tmp-*"))
        if temps and temps[0].stat().st_size > 1_000_000:
            temp = temps[0]
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert temp is not None, "the writer never started writing its temporary file"
    state = load_checkpoint(last)
    assert state["global_step"] == 1
    assert torch.equal(state["state_dict"]["w"], torch.ones(3))


def test_plain_write_would_truncate_so_the_test_above_means_something(tmp_path: Path) -> None:
    # A truncated checkpoint is what a kill mid-write leaves without the rename; it must not load.
    good = tmp_path / "good.ckpt"
    torch.save({"w": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(truncated)


class _Arbitrary:
    pass


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"obj": _Arbitrary()}, path)  # a class instance: only the full unpickler would rebuild it
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_resolve_resume_forms(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "exp" / "20260101-000000"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, run / "checkpoints" / "last.ckpt")
    expected = (run / "checkpoints" / "last.ckpt").resolve()
    assert resolve_resume(str(run), tmp_path / "runs", "exp") == expected
    assert resolve_resume(str(expected), tmp_path / "runs", "exp") == expected
    assert resolve_resume("last", tmp_path / "runs", "exp") == expected
    with pytest.raises(CheckpointError, match="no earlier run"):
        resolve_resume("last", tmp_path / "runs", "other")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_resume(str(tmp_path / "missing.ckpt"), tmp_path / "runs", "exp")
    with pytest.raises(CheckpointError, match="holds no"):
        resolve_resume(str(tmp_path), tmp_path / "runs", "exp")


def test_export_safetensors_strips_prefix_and_handles_tied_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    shared = torch.randn(4, 3)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {"model.wte": shared, "model.lm_head": shared, "other.x": torch.ones(2)}, "global_step": 5}, ckpt
    )
    out = export_safetensors(ckpt, tmp_path / "model.safetensors")
    tensors = load_file(str(out))
    assert set(tensors) == {"wte", "lm_head", "other.x"}
    assert torch.equal(tensors["wte"], shared)
    assert torch.equal(tensors["lm_head"], shared)


def test_frozen_networks_stay_out_of_the_state_dict() -> None:
    from torch import nn

    from keel.core.checkpoint import SkipsFrozenWeights

    class WithTeacher(SkipsFrozenWeights, nn.Module):
        frozen_prefixes = ("teacher.",)

        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Linear(2, 2)
            self.teacher = nn.Linear(2, 2)

    model = WithTeacher()
    state = model.state_dict()
    assert set(state) == {"student.weight", "student.bias"}
    other = WithTeacher()
    other.load_state_dict(state)  # strict, yet the teacher's keys are not required
    assert torch.equal(other.student.weight, model.student.weight)
    with pytest.raises(RuntimeError, match=r"missing \['student.bias'\]"):
        other.load_state_dict({"student.weight": state["student.weight"]})
