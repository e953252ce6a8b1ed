"""SophiaG as DeepSpeed's client optimizer: the ZeRO refresh must equal the plain-PyTorch one.

DeepSpeed's engine runs on the CPU (``DS_ACCELERATOR=cpu``, gloo), so the test drives the engine
directly, the way Lightning's DeepSpeed strategy does, with :func:`refresh_under_deepspeed` (what
:class:`SophiaHessianCallback` calls under DeepSpeed). Two ranks see different halves of each batch
and sample their own labels; each rank also replays the whole procedure on the full batch in plain
PyTorch, and the parameters after training must agree.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from keel.core.testing import RunIf
from keel.core.testing.launch import run_ranks

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.nn.functional as F
    import deepspeed
    from keel.core.optim import SophiaG, refresh_under_deepspeed
    from keel.core.optim.sophia import sampled_label_loss
    from keel.core.trainer import deepspeed_strategy

    torch.set_num_threads(1)
    rank, world, stage = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(sys.argv[2])
    deepspeed.init_distributed(dist_backend="gloo")
    K, STEPS, BATCH, CLASSES, BS = 3, 7, 8, 5, 40

    def model_():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))

    def optimizer_(params):
        return SophiaG(params, lr=0.05, rho=0.02, weight_decay=0.1, bs=BS)

    data = torch.Generator().manual_seed(1)
    xs = torch.randn(STEPS, world * BATCH, 6, generator=data)
    ys = torch.randint(0, CLASSES, (STEPS, world * BATCH), generator=data)

    def labels_loss(logits, who, refresh):
        generator = torch.Generator().manual_seed(1000 * refresh + who)
        return sampled_label_loss(logits, None, generator)[0]

    # DeepSpeed: each rank trains on its half of every batch.
    config = dict(deepspeed_strategy(f"deepspeed_stage_{stage}").config)
    config.update(train_micro_batch_size_per_gpu=BATCH, gradient_accumulation_steps=1, gradient_clipping=1.0)
    model = model_()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer_(model.parameters()), config=config)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for step in range(STEPS):
        loss = F.cross_entropy(engine(xs[step, mine]), ys[step, mine])
        engine.backward(loss)
        engine.step()
        if step % K == K - 1:
            sampled = labels_loss(engine(xs[step, mine]), rank, step // K)
            refresh_under_deepspeed(engine, sampled, [engine.optimizer.optimizer])
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        zero = [p.detach().clone().float() for p in engine.module.parameters()]

    # Plain PyTorch on the full batch: the mean of the ranks' means, clipped like DeepSpeed clips.
    plain = model_()
    opt = optimizer_(plain.parameters())
    for step in range(STEPS):
        F.cross_entropy(plain(xs[step]), ys[step]).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % K == K - 1:
            logits = plain(xs[step])
            halves = [labels_loss(logits[r * BATCH:(r + 1) * BATCH], r, step // K) for r in range(world)]
            (sum(halves) / world).backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            opt.update_hessian()
            opt.zero_grad()
    hessian = sum(float(opt.state[p]["hessian"].abs().sum()) for p in plain.parameters())
    gap = max(float((a - b).abs().max()) for a, b in zip(zero, plain.parameters()))
    moved = max(float((a - b).abs().max()) for a, b in zip(zero, model_().parameters()))
    with open(f"{sys.argv[1]}/stage{stage}-rank{rank}.json", "w") as out:
        json.dump({"gap": gap, "moved": moved, "hessian": hessian, "zero": type(engine.optimizer).__name__}, out)
    """
)


@RunIf(deepspeed=True, distributed=True, linux=True)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_refresh_matches_plain_pytorch_on_two_ranks(tmp_path: Path, stage: int) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    world = 2
    run_ranks(script, [tmp_path, stage], world, env={"DS_ACCELERATOR": "cpu"})
    import json

    for rank in range(world):
        result = json.loads((tmp_path / f"stage{stage}-rank{rank}.json").read_text())
        assert result["zero"] != "SophiaG", "the engine must wrap SophiaG in a ZeRO optimizer"
        assert result["hessian"] > 0, "refreshes must have filled h"
        assert result["moved"] > 1e-2, "training must have moved the parameters"
        assert result["gap"] < 1e-5, f"ZeRO-{stage} and plain PyTorch disagree by {result['gap']}"


def test_folding_hessian_leaves_parameters_and_moments_alone() -> None:
    from keel.core.optim import SophiaG

    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = SophiaG([param], lr=0.1, betas=(0.9, 0.5), weight_decay=0.1)
    param.grad = torch.tensor([0.5, 0.5, 0.5])
    opt.step()
    before, exp_avg = param.detach().clone(), opt.state[param]["exp_avg"].clone()
    param.grad = torch.tensor([2.0, 0.0, -1.0])
    with opt.folding_hessian():
        opt.step()
    assert torch.equal(param.detach(), before)
    assert torch.equal(opt.state[param]["exp_avg"], exp_avg)
    # h <- beta2 * 0 + (1 - beta2) * g * g
    assert torch.allclose(opt.state[param]["hessian"], torch.tensor([2.0, 0.0, 0.5]))
    param.grad = torch.tensor([0.5, 0.5, 0.5])
    opt.step()  # the context has ended: a normal update again
    assert not torch.equal(param.detach(), before)
