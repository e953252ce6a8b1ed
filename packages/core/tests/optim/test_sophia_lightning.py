"""SophiaHessianCallback under Lightning's automatic optimization: schedule, bs, logging, resume, DDP."""

from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from keel.core.errors import ConfigError
from keel.core.optim import SophiaG, SophiaH, SophiaHessianCallback
from keel.core.tasks import CausalLMModule, build_causal_lm
from keel.core.testing import BoringModule, RandomTokenDataset, RunIf
from keel.core.testing.launch import run_ranks


class Recorder(L.Callback):
    """Keeps every training loss and the global step of every SophiaG refresh."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class RecordingSophiaCallback(SophiaHessianCallback):
    """The callback, noting the global step (steps taken so far) at each refresh."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh_steps: list[int] = []

    def _refresh_gnb(self, trainer, pl_module, batch) -> None:
        self.refresh_steps.append(trainer.global_step)
        super()._refresh_gnb(trainer, pl_module, batch)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        before = self.refreshes
        super().on_before_backward(trainer, pl_module, loss)
        if self.refreshes != before:
            self.refresh_steps.append(trainer.global_step)


def _repeated_batch(size: int = 4, length: int = 16, vocab_size: int = 32) -> DataLoader:
    # One batch per epoch, the same every time: "loss decreases" then means the optimizer works.
    return DataLoader(RandomTokenDataset(size=size, length=length, vocab_size=vocab_size, seed=0), batch_size=size)


def _trainer(tmp_path: Path, callbacks: list[L.Callback], max_steps: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def test_sophiag_trains_a_causal_lm_with_the_callback(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_causal_lm(model_type="gpt2", vocab_size=64, n_layer=1, n_head=2, n_embd=16, n_positions=32)
    module = CausalLMModule(model, optimizer=partial(SophiaG, lr=3e-3, rho=0.04, weight_decay=0.1))
    sophia, recorder = RecordingSophiaCallback(), Recorder()
    trainer = _trainer(tmp_path, [sophia, recorder], max_steps=20)
    trainer.fit(module, train_dataloaders=_repeated_batch(vocab_size=64))

    assert sophia.refreshes == 2 == 20 // 10
    assert sophia.refresh_steps == [10, 20], "refresh after the updates of steps 9 and 19 (s % k == k - 1)"
    (opt,) = trainer.optimizers
    assert len(opt.param_groups) == 2  # decay / no-decay groups, both told the batch's token count
    assert [g["bs"] for g in opt.param_groups] == [4 * 16, 4 * 16]
    hessians = [opt.state[p]["hessian"] for g in opt.param_groups for p in g["params"]]
    assert all((h >= 0).all() for h in hessians)
    assert sum(float(h.sum()) for h in hessians) > 0
    assert all(p.grad is None for p in module.parameters()), "the sampled-label gradients must be cleared"
    assert recorder.losses[-1] < recorder.losses[0] - 0.1
    win_rate = float(trainer.callback_metrics["sophia/win_rate"])
    assert 0.0 < win_rate <= 1.0
    assert win_rate == pytest.approx(opt.last_win_rate)
    assert float(trainer.callback_metrics["sophia/hessian_updates"]) == 2


def test_refresh_schedule_follows_optimizer_steps_under_accumulation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BoringModule(dropout=0.0, optimizer=partial(SophiaG, lr=1e-2, update_period=3))
    sophia = RecordingSophiaCallback()
    trainer = _trainer(tmp_path, [sophia], max_steps=10, accumulate_grad_batches=2)
    trainer.fit(module, train_dataloaders=DataLoader(RandomTokenDataset(size=64, length=8), batch_size=2))
    # k comes from the optimizer; 10 steps of 2 micro-batches each: steps 2, 5, 8 refresh.
    assert sophia.refresh_steps == [3, 6, 9]
    assert sophia.refreshes == 10 // 3


def test_sophiah_refreshes_from_the_training_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BoringModule(dropout=0.0, optimizer=partial(SophiaH, lr=1e-2, rho=0.01, seed=1))
    sophia, recorder = RecordingSophiaCallback(update_period=4), Recorder()
    trainer = _trainer(tmp_path, [sophia, recorder], max_steps=12)
    trainer.fit(module, train_dataloaders=_repeated_batch())
    assert sophia.refresh_steps == [3, 7, 11], "on_before_backward of steps 3, 7 and 11"
    (opt,) = trainer.optimizers
    hessians = torch.cat([opt.state[p]["hessian"].reshape(-1) for p in module.parameters()])
    assert hessians.abs().sum() > 0
    assert recorder.losses[-1] < recorder.losses[0]
    assert 0.0 < float(trainer.callback_metrics["sophia/win_rate"]) <= 1.0


def test_sophiah_estimate_ignores_the_accumulation_scaling_of_the_loss(tmp_path: Path) -> None:
    def first_hessian(accumulate: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        module = BoringModule(dropout=0.0, optimizer=partial(SophiaH, lr=1e-2, update_period=1, seed=2))
        trainer = _trainer(tmp_path, [SophiaHessianCallback()], max_steps=1, accumulate_grad_batches=accumulate)
        trainer.fit(module, train_dataloaders=_repeated_batch())
        (opt,) = trainer.optimizers
        return [opt.state[p]["hessian"] for p in module.parameters()]

    # Same batch, same parameters and probe at the first micro-batch: Lightning's loss / 2 must not halve h.
    for single, accumulated in zip(first_hessian(1), first_hessian(2), strict=True):
        torch.testing.assert_close(single, accumulated)


def test_resume_from_a_checkpoint_is_exact(tmp_path: Path) -> None:
    def run(max_steps: int, ckpt: str | None = None, save: str | None = None) -> torch.nn.Module:
        torch.manual_seed(0)
        module = BoringModule(dropout=0.0, optimizer=partial(SophiaG, lr=1e-2, update_period=4))
        trainer = _trainer(tmp_path, [SophiaHessianCallback()], max_steps=max_steps)
        trainer.fit(module, train_dataloaders=_repeated_batch(), ckpt_path=ckpt)
        if save is not None:
            trainer.save_checkpoint(save)
        return module

    straight = run(10)
    path = str(tmp_path / "half.ckpt")
    run(6, save=path)
    resumed = run(10, ckpt=path)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_deepspeed_takes_sophiag_but_refuses_accumulation_and_sophiah(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    # Strategy objects without running their constructors (deepspeed itself may be absent).
    def fake(strategy: type, accumulate: int = 1) -> SimpleNamespace:
        return SimpleNamespace(
            strategy=object.__new__(strategy), precision_plugin=None, accumulate_grad_batches=accumulate
        )

    callback = SophiaHessianCallback()
    callback.setup(fake(DeepSpeedStrategy), None, "fit")
    # a ZeRO optimizer keeps the client optimizer as `.optimizer`
    param = torch.nn.Parameter(torch.zeros(2))
    zero = SimpleNamespace(optimizer=SophiaG([param]))
    callback.on_fit_start(SimpleNamespace(optimizers=[zero]), None)
    assert callback._optimizers == [zero.optimizer]

    with pytest.raises(ConfigError, match="SophiaH cannot run under DeepSpeed"):
        callback.on_fit_start(SimpleNamespace(optimizers=[SimpleNamespace(optimizer=SophiaH([param]))]), None)
    with pytest.raises(ConfigError, match="under DeepSpeed needs accumulate_grad_batches=1"):
        SophiaHessianCallback().setup(fake(DeepSpeedStrategy, accumulate=4), None, "fit")
    with pytest.raises(ConfigError, match="does not support the strategy .*supported: a single device"):
        SophiaHessianCallback().setup(fake(FSDPStrategy), None, "fit")


def test_refuses_optimizers_that_are_not_sophia(tmp_path: Path) -> None:
    module = BoringModule(optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = _trainer(tmp_path, [SophiaHessianCallback()], max_steps=1)
    with pytest.raises(ConfigError, match="needs a SophiaG or SophiaH optimizer.*AdamW"):
        trainer.fit(module, train_dataloaders=_repeated_batch())


def test_hessian_logits_hook_takes_precedence(tmp_path: Path) -> None:
    class Hooked(BoringModule):
        calls = 0

        def hessian_logits(self, batch):
            Hooked.calls += 1
            return self(batch["input_ids"])[:, :-1]

    module = Hooked(dropout=0.0, optimizer=partial(SophiaG, lr=1e-2, update_period=2))
    sophia = SophiaHessianCallback()
    _trainer(tmp_path, [sophia], max_steps=4).fit(module, train_dataloaders=_repeated_batch())
    assert Hooked.calls == 2
    (opt,) = sophia._optimizers
    assert opt.bs == 4 * 15  # positions of the hook's logits


# ---------------------------------------------------------------------------- two processes over gloo

DDP_WORKER = textwrap.dedent(
    """
    import sys
    from functools import partial

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from keel.core.optim import SophiaG, SophiaH, SophiaHessianCallback
    from keel.core.testing import BoringModule, RandomTokenDataset

    torch.set_num_threads(1)
    out = sys.argv[1]
    results = {}
    for name, factory in (("g", partial(SophiaG, lr=1e-2)), ("h", partial(SophiaH, lr=1e-2))):
        torch.manual_seed(0)
        module = BoringModule(dropout=0.0, optimizer=factory)
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[SophiaHessianCallback(update_period=4)],
        )
        losses = []

        class Keep(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses.append(float(outputs["loss"]))

        trainer.callbacks.append(Keep())
        loader = DataLoader(RandomTokenDataset(size=32, length=8), batch_size=4)
        trainer.fit(module, train_dataloaders=loader)
        (opt,) = trainer.optimizers
        results[name] = {
            "hessian": [opt.state[p]["hessian"].clone() for p in module.parameters()],
            "params": [p.detach().clone() for p in module.parameters()],
            "losses": losses,
            "bs": opt.param_groups[0].get("bs"),
        }
    torch.save(results, f"{out}/rank{trainer.global_rank}.pt")
    """
)


@RunIf(distributed=True, linux=True)
def test_ddp_ranks_keep_the_same_hessian(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    # LOCAL_RANK in the environment tells Lightning the processes were launched externally
    run_ranks(script, [tmp_path], 2, env={"CI": "1"}, timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("g", "h"):
        first, second = ranks[0][name], ranks[1][name]
        assert first["losses"] != second["losses"], "the ranks must see different data"
        assert any(float(h.abs().sum()) > 0 for h in first["hessian"]), "a refresh must have happened"
        for a, b in zip(first["hessian"], second["hessian"], strict=True):
            assert torch.equal(a, b)
        for a, b in zip(first["params"], second["params"], strict=True):
            assert torch.equal(a, b)
    # tokens per Hessian batch, all ranks together: 2 ranks x 4 sequences x 8 tokens
    assert ranks[0]["g"]["bs"] == ranks[1]["g"]["bs"] == 2 * 4 * 8
