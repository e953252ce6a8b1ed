"""Cross-device negatives: two gloo processes give the single-process loss and gradients (bi-encoder, LEAD)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.core.testing import RunIf
from keel.core.testing.launch import launch_ranks, wait_ranks

SCRIPT = Path(__file__).with_name("ddp_step.py")


def _compare(out: Path) -> dict[str, torch.Tensor]:
    """The single-process gradients, after checking that both ranks' loss and gradients match them."""
    single = torch.load(out / "rank0-of-1.pt", weights_only=True)
    ranks = [torch.load(out / f"rank{r}-of-2.pt", weights_only=True) for r in range(2)]
    assert single["world_size"] == 1
    assert all(r["world_size"] == 2 for r in ranks)
    # the global loss is the mean of the ranks' losses (2 queries each)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single["loss"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"]), "the ranks must hold different queries"
    assert set(single["grads"]) == set(ranks[0]["grads"])
    for name, grad in single["grads"].items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return single["grads"]


@RunIf(distributed=True, linux=True)
def test_two_processes_match_one_with_hard_negatives_and_a_cross_device_duplicate(tmp_path: Path) -> None:
    # each rank writes rank{RANK}-of-{WORLD_SIZE}.pt; the two jobs run side by side
    procs = launch_ranks(SCRIPT, [tmp_path], 2) + launch_ranks(SCRIPT, [tmp_path], 1)
    wait_ranks(procs, timeout=240)
    assert "model.log_temperature" in _compare(tmp_path)


@RunIf(distributed=True, linux=True)
@pytest.mark.parametrize("kind", ["lead", "lead_joint"])
def test_lead_on_two_processes_matches_one(tmp_path: Path, kind: str) -> None:
    # the student scores every device's passages with gradient; the teacher's gathered scores carry
    # gradient only when it trains
    procs = launch_ranks(SCRIPT, [tmp_path, kind], 2) + launch_ranks(SCRIPT, [tmp_path, kind], 1)
    wait_ranks(procs, timeout=240)
    grads = _compare(tmp_path)
    teacher_grads = [name for name in grads if name.startswith("teacher.")]
    assert bool(teacher_grads) == (kind == "lead_joint")
    assert any(name.startswith("model.passage_encoder.") for name in grads)
