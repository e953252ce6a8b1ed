"""keel's standard callbacks: per-rank RNG state, the loss guard, the plain progress bar."""

from __future__ import annotations

import io
import random
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from keel.core.callbacks import FiniteLossGuard, PlainProgressBar, RNGStateCallback
from keel.core.errors import NonFiniteLossError
from keel.core.testing import RunIf
from keel.core.testing.launch import run_ranks


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trip_single_process() -> None:
    callback = RNGStateCallback()
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state = callback.state_dict()
    expected = _draws()
    _draws()  # move every generator on
    callback.load_state_dict(state)
    callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 0)
    assert _draws() == expected


# The worker runs as a script in fresh processes: pickling a function from this test module into
# spawned children would need the test directory importable, which it is not under --import-mode=importlib.
RANK_WORKER = textwrap.dedent(
    """
    import os
    import random
    import sys
    from types import SimpleNamespace

    import numpy as np
    import torch
    import torch.distributed as dist

    from keel.core.callbacks import RNGStateCallback

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    rank, world, out = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # ranks draw different dropout masks in a real run
    random.seed(100 + rank)
    np.random.seed(100 + rank)
    state = RNGStateCallback().state_dict()  # collective: every rank takes part
    expected = draws()
    draws()
    restored = RNGStateCallback()
    restored.load_state_dict(state)
    restored.on_train_batch_start(SimpleNamespace(world_size=world, global_rank=rank), None, None, 0)
    torch.save({"expected": expected, "got": draws(), "ranks": len(state["per_rank"])}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    """
)


@RunIf(distributed=True, linux=True)
def test_rng_state_is_gathered_and_restored_per_rank(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(RANK_WORKER)
    run_ranks(script, [tmp_path], 2, timeout=240)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in results:
        assert result["ranks"] == 2
        assert result["got"] == result["expected"]
    assert results[0]["expected"] != results[1]["expected"], "each rank must get its own state back"


def test_finite_loss_guard_names_the_step() -> None:
    trainer = SimpleNamespace(global_step=12, current_epoch=1)
    FiniteLossGuard().on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, None, 3)
    with pytest.raises(NonFiniteLossError, match="became nan at step 12 \\(epoch 1, batch 3\\)"):
        FiniteLossGuard().on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 3)


def test_plain_progress_bar_prints_every_n_steps() -> None:
    stream = io.StringIO()
    bar = PlainProgressBar(every=5, stream=stream)
    trainer = SimpleNamespace(
        global_step=0,
        max_steps=20,
        num_training_batches=100,
        max_epochs=None,
        accumulate_grad_batches=1,
        current_epoch=0,
        callback_metrics={},
        progress_bar_metrics={"train/loss": 1.5},
    )
    bar.on_train_start(trainer, None)
    for step in range(1, 21):
        trainer.global_step = step
        bar.get_metrics = lambda *_: {"train/loss": 1.5}  # type: ignore[method-assign]
        bar.on_train_batch_end(trainer, None, None, None, step)
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert "train/loss 1.5" in lines[0]
