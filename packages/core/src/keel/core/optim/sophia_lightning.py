"""Sophia under Lightning's automatic optimization: a callback that refreshes the Hessian every ``k`` steps.

Give the module a Sophia optimizer factory; ``keel run`` adds :class:`SophiaHessianCallback` to the
trainer when the model's config instantiates a Sophia (list it under ``callbacks`` to set its
arguments; with a plain Lightning Trainer, add it yourself). Nothing in the LightningModule has to
change:

.. code-block:: yaml

    model:
      optimizer: {_target_: keel.core.optim.SophiaG, _partial_: true, lr: 6e-4, rho: 0.05, weight_decay: 0.2}
    trainer:
      gradient_clip_val: 1.0  # the official loop clips the data gradients at 1.0
    callbacks:  # optional under keel run: only to change its arguments
      - {_target_: keel.core.optim.SophiaHessianCallback, update_period: 10}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from keel.core.errors import ConfigError
from keel.core.optim.sophia import SophiaG, SophiaH, _Sophia, sampled_label_loss

__all__ = ["SophiaHessianCallback", "refresh_under_deepspeed", "sampled_label_loss"]

_SUPPORTED = "supported: a single device ('auto'), DDP ('ddp', 'ddp_spawn', 'ddp_fork') and DeepSpeed (SophiaG)"


def _label_seed(seed: int, rank: int, refresh: int) -> int:
    # A fresh, reproducible seed per (seed, rank, refresh): ranks draw different labels, and a resumed
    # run draws the same ones without any generator state in the checkpoint.
    return ((seed * 1_000_003 + rank) * 1_000_003 + refresh) % (2**63)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place across ranks, with one collective per (device, dtype)."""
    world = _world_size()
    if world == 1 or not tensors:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for bucket in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        for tensor, value in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            tensor.copy_(value.view_as(tensor))


def client_optimizer(optimizer: Any) -> Any:
    """The user's optimizer inside a wrapper (DeepSpeed's ZeRO optimizers keep it as ``.optimizer``)."""
    while not isinstance(optimizer, _Sophia) and isinstance(getattr(optimizer, "optimizer", None), Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def refresh_under_deepspeed(engine: Any, loss: Tensor, optimizers: Sequence[SophiaG]) -> None:
    """Fold the gradient of a sampled-label ``loss`` into the SophiaG client optimizers of a DeepSpeed engine.

    ZeRO keeps the optimizer state as flat fp32 partitions and materialises their gradients only inside
    its own ``step``. So the refresh goes through the engine like a training step: ``engine.backward``
    reduces (and partitions) the gradients across ranks, then the ZeRO optimizer's ``step`` unscales
    and clips them to the engine's ``gradient_clipping`` (the official loop's ``clip_grad_norm_`` of
    the sampled-label gradients) and calls the client's ``step``, which inside
    :meth:`SophiaG.folding_hessian` folds them into each partition's ``h`` and leaves the parameters
    alone. The engine's step counter and learning-rate scheduler do not move.

    Args:
        engine: A ``deepspeed.DeepSpeedEngine`` whose client optimizer is (or wraps) a SophiaG, with
            ``gradient_accumulation_steps == 1``.
        loss: The mean cross-entropy against sampled labels (:func:`sampled_label_loss`), computed by
            a forward pass of the engine's module.
        optimizers: The SophiaG client optimizers to refresh.
    """
    engine.backward(loss, scale_wrt_gas=False)
    with ExitStack() as stack:
        for opt in optimizers:
            stack.enter_context(opt.folding_hessian())
        engine.optimizer.step()
    engine.optimizer.zero_grad()


class SophiaHessianCallback(L.Callback):
    """Runs Sophia's periodic Hessian refresh and feeds ``bs`` to the optimizer step.

    **SophiaG.** After the optimizer step of every step index ``s`` with ``s % k == k - 1`` (the
    official ``iter_num % k == k - 1``, after that iteration's update), the callback runs one more
    forward pass on the same batch, samples labels from the logits (:func:`sampled_label_loss`),
    backpropagates their mean cross-entropy, averages the gradients across ranks, clips them to norm
    ``clip_grad_norm`` like the official loop, calls ``optimizer.update_hessian()`` and clears the
    gradients. Logits come from, in this order:

    1. ``pl_module.hessian_logits(batch)``, if the module defines it (any model, any batch);
    2. ``pl_module.model(input_ids=..., attention_mask=...).logits`` for a Hugging Face causal LM held
       as ``pl_module.model`` (e.g. :class:`~keel.core.tasks.CausalLMModule`) and a dict batch with
       ``input_ids``;
    3. ``pl_module(x)`` with ``x`` the batch's ``input_ids``, its first element (tuple/list batches)
       or the batch itself; its ``.logits`` if it has them, else the output tensor itself.

    A dict batch's ``attention_mask`` (when shaped like the logits without their last axis) keeps
    padding out of the sampled loss. The forward runs in the trainer's precision context and in the
    module's current (training) mode, with dropout, as in the official loop; the labels come from a
    generator seeded from ``(seed, rank, refresh count)``, so resume is exact and the global RNG is
    untouched.

    **bs.** Lightning calls ``optimizer.step(closure=...)`` without ``bs``, so the callback sets the
    optimizer's default (:attr:`SophiaG.bs`, stored in its parameter groups and checkpoint): ``bs``
    if given, else after every refresh the number of positions of the sampled loss times the world
    size (batch size x sequence length x world size without padding). Before the first refresh
    ``h == 0`` and ``bs`` has no effect.

    **SophiaH.** In ``on_before_backward`` of each step index ``s`` with ``s % k == k - 1`` the
    callback takes the training loss itself, computes Hutchinson's ``u * (H u)``
    (:meth:`SophiaH.hutchinson`, which leaves the graph for Lightning's backward), averages it across
    ranks and folds it in. This reuses the step's forward pass instead of recomputing the loss (any
    LightningModule works, no loss hook is needed) and refreshes ``h`` just before that step's update
    instead of just after it. With gradient accumulation the estimate comes from the step's first
    micro-batch (SophiaG: its last one, and ``bs`` counts that micro-batch's tokens).

    **Distributed.** Under DDP the extra forward bypasses the DDP wrapper, so nothing is reduced
    implicitly; the callback all-reduces (averages) the sampled-label gradients or the Hutchinson
    estimates itself whenever ``torch.distributed`` is initialized with more than one process, so every
    rank keeps the same ``h`` (every rank must produce gradients for the same parameters, as with any
    language model).

    **DeepSpeed.** SophiaG works as DeepSpeed's client optimizer (ZeRO stages 1-3, with or without
    offload): ZeRO hands it flat fp32 partitions whose gradients exist only inside its own ``step``, so
    the refresh runs the sampled-label backward through the engine and folds the partition gradients
    into ``h`` inside that step (:func:`refresh_under_deepspeed`). The engine clips them to its
    ``gradient_clipping`` (``trainer.gradient_clip_val``) instead of ``clip_grad_norm``, and the win
    rate is summed over the ranks' partitions. Refused under DeepSpeed: SophiaH (its Hessian-vector
    product needs a double backward of the full parameters, which ZeRO's hooks do not support) and
    ``accumulate_grad_batches > 1`` (the refresh must be an accumulation boundary of its own).

    FSDP and model-parallel strategies are refused (sharded parameters and gradients outside any
    step the callback can enter). ``16-mixed`` precision is refused because its gradient scaler would
    scale the Hutchinson loss and not the sampled-label backward; use ``bf16-mixed``.

    **Logging.** ``sophia/win_rate`` (fraction of unclipped coordinates, see
    :meth:`SophiaG.win_rate`) on the steps the logger writes (``trainer.log_every_n_steps``), and
    ``sophia/hessian_updates`` (refreshes so far). With several Sophia optimizers the win rate of
    the ``i``-th (``i > 0``) is logged as ``sophia/win_rate_i``.

    Args:
        update_period: Steps between refreshes, ``k``. ``None`` reads the optimizer's ``update_period``.
        bs: Tokens per batch for SophiaG's denominator. ``None`` infers it at each refresh.
        clip_grad_norm: Norm to which the sampled-label gradients are clipped (``None``: no clipping).
        seed: Seed of the label sampling.
        log_win_rate: Log ``sophia/win_rate``.
    """

    def __init__(
        self,
        update_period: int | None = None,
        bs: int | None = None,
        clip_grad_norm: float | None = 1.0,
        seed: int = 0,
        log_win_rate: bool = True,
    ) -> None:
        if update_period is not None and update_period < 1:
            raise ConfigError(f"SophiaHessianCallback needs update_period >= 1, got {update_period}")
        if bs is not None and bs < 1:
            raise ConfigError(f"SophiaHessianCallback needs bs >= 1, got {bs}")
        self.update_period = update_period
        self.bs = bs
        self.clip_grad_norm = clip_grad_norm
        self.seed = seed
        self.log_win_rate = log_win_rate
        self.refreshes = 0
        self._period = update_period or 10
        self._optimizers: list[_Sophia] = []
        self._last_step = 0
        self._hutchinson_step = -1
        self._deepspeed = False

    # ------------------------------------------------------------------ checks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse strategies and precisions the refresh cannot support, with one line."""
        if stage != "fit":
            return
        from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

        strategy = trainer.strategy
        name = getattr(strategy, "strategy_name", type(strategy).__name__)
        self._deepspeed = isinstance(strategy, DeepSpeedStrategy)
        if self._deepspeed and trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                "SophiaHessianCallback under DeepSpeed needs accumulate_grad_batches=1: the Hessian refresh "
                "runs its own backward and ZeRO step, which must not fall inside an accumulation window"
            )
        if not isinstance(strategy, SingleDeviceStrategy | DDPStrategy | DeepSpeedStrategy):
            raise ConfigError(f"SophiaHessianCallback does not support the strategy {name!r}; {_SUPPORTED}")
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ConfigError(
                "SophiaHessianCallback does not support precision '16-mixed'; use 'bf16-mixed' or '32-true'"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Find the Sophia optimizers and settle ``k``."""
        clients = [client_optimizer(opt) for opt in trainer.optimizers]
        self._optimizers = [opt for opt in clients if isinstance(opt, _Sophia)]
        if not self._optimizers:
            names = ", ".join(type(opt).__name__ for opt in clients) or "none"
            raise ConfigError(
                f"SophiaHessianCallback needs a SophiaG or SophiaH optimizer; the module configured {names}"
            )
        if self._deepspeed and self._hutchinson():
            raise ConfigError(
                "SophiaH cannot run under DeepSpeed: Hutchinson's Hessian-vector product needs a double "
                "backward through the full parameters; use SophiaG (the paper's recommended estimator)"
            )
        if self.update_period is None:
            self._period = getattr(self._optimizers[0], "update_period", 10)
        if self.bs is not None:
            for opt in self._gnb():
                opt.bs = self.bs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the step count, so a refresh follows only batches that stepped (also after resume)."""
        self._last_step = trainer.global_step

    def _gnb(self) -> list[SophiaG]:
        return [opt for opt in self._optimizers if isinstance(opt, SophiaG)]

    def _hutchinson(self) -> list[SophiaH]:
        return [opt for opt in self._optimizers if isinstance(opt, SophiaH)]

    # ------------------------------------------------------------------ SophiaH: Hessian-vector products

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        """On refresh steps, fold Hutchinson's estimate of the training loss into each SophiaH."""
        step = trainer.global_step
        optimizers = self._hutchinson()
        if not optimizers or step % self._period != self._period - 1 or self._hutchinson_step == step:
            return
        self._hutchinson_step = step
        # Automatic optimization divides the loss by the number of accumulated micro-batches;
        # the estimate must be of the full loss of this micro-batch.
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        for opt in optimizers:
            try:
                estimates = opt.hutchinson(loss)
            except RuntimeError as err:
                if "derivative for" not in str(err):
                    raise
                raise ConfigError(
                    f"SophiaH needs a double backward through the model, which one of its kernels lacks ({err}); "
                    "build the model with attention that supports it, e.g. attn_implementation='eager'"
                ) from err
            present = [e for e in estimates if e is not None]
            if scale != 1 and present:
                torch._foreach_mul_(present, float(scale))
            _all_reduce_mean(present)
            opt.update_hessian(estimates=estimates)
        self.refreshes += 1

    # ------------------------------------------------------------------ SophiaG: sampled labels

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After a step with index ``s % k == k - 1``, refresh every SophiaG; then log the win rate."""
        step = trainer.global_step
        if step == self._last_step:
            return  # accumulating gradients, or a skipped step: no update happened on this batch
        self._last_step = step
        if self._gnb() and step % self._period == 0:
            self._refresh_gnb(trainer, pl_module, batch)
        # Log only on the steps the logger writes: the win rate costs a reduction per parameter.
        every = getattr(trainer, "log_every_n_steps", 1)
        if every <= 0 or step % every != 0:
            return
        pl_module.log("sophia/hessian_updates", float(self.refreshes), on_step=True, on_epoch=False, batch_size=1)
        for index, opt in enumerate(self._optimizers if self.log_win_rate else []):
            rate = self._win_rate(opt)
            if rate is not None:
                key = "sophia/win_rate" if index == 0 else f"sophia/win_rate_{index}"
                pl_module.log(key, rate, on_step=True, on_epoch=False, batch_size=1)

    def _win_rate(self, opt: _Sophia) -> Tensor | None:
        if not self._deepspeed:
            return opt.win_rate()  # every rank holds the whole (identical) state
        counts = opt.win_counts()  # this rank's ZeRO partition: sum over ranks
        device = next(iter(opt.state.values()))["exp_avg"].device if opt.state else torch.device("cpu")
        local = torch.zeros(2, dtype=torch.float64, device=device)
        if counts is not None:
            local[0], local[1] = counts[0].double(), float(counts[1])
        if _world_size() > 1:
            dist.all_reduce(local)
        return None if local[1] == 0 else (local[0] / local[1]).float()

    def _refresh_gnb(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        optimizers = self._gnb()
        # The step's data gradients are spent; the sampled-label gradients must start from zero.
        pl_module.zero_grad(set_to_none=True)
        with torch.enable_grad(), trainer.precision_plugin.forward_context():
            logits, mask = self._logits(pl_module, batch)
            generator = torch.Generator(device=logits.device)
            generator.manual_seed(_label_seed(self.seed, trainer.global_rank, self.refreshes))
            loss, count = sampled_label_loss(logits, mask, generator)
        if self._deepspeed:
            refresh_under_deepspeed(trainer.strategy.model, loss, optimizers)
            for opt in optimizers:
                opt.bs = self.bs if self.bs is not None else count * _world_size()
            self.refreshes += 1
            return
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        _all_reduce_mean(grads)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip_grad_norm)
        for opt in optimizers:
            opt.update_hessian()
            opt.bs = self.bs if self.bs is not None else count * _world_size()
        pl_module.zero_grad(set_to_none=True)
        self.refreshes += 1

    @staticmethod
    def _logits(pl_module: L.LightningModule, batch: Any) -> tuple[Tensor, Tensor | None]:
        hook = getattr(pl_module, "hessian_logits", None)
        model = getattr(pl_module, "model", None)
        if callable(hook):
            out = hook(batch)
        elif isinstance(batch, Mapping) and "input_ids" in batch and isinstance(model, torch.nn.Module):
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        elif isinstance(batch, Mapping) and "input_ids" in batch:
            out = pl_module(batch["input_ids"])
        elif isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
            out = pl_module(batch[0])
        elif isinstance(batch, Tensor):
            out = pl_module(batch)
        else:
            raise ConfigError(
                f"SophiaHessianCallback cannot find the logits of a {type(batch).__name__} batch; "
                "define hessian_logits(batch) on the LightningModule"
            )
        logits = getattr(out, "logits", out)
        if not isinstance(logits, Tensor) or logits.ndim < 2:
            raise ConfigError(
                "SophiaHessianCallback needs logits of shape [..., classes] from the model; "
                "define hessian_logits(batch) on the LightningModule"
            )
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if not isinstance(mask, Tensor) or mask.shape != logits.shape[:-1]:
            mask = None
        return logits, mask

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """The refresh count (it also seeds the label sampling, which makes resume exact)."""
        return {"refreshes": self.refreshes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the refresh count."""
        self.refreshes = int(state_dict.get("refreshes", 0))
