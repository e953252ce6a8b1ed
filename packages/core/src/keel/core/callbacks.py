"""Callbacks every keel run gets: RNG state in checkpoints, a plain progress bar, throughput, loss guard."""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ProgressBar

from keel.core.errors import NonFiniteLossError


def _local_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _apply_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCallback(L.Callback):
    """Saves the Python, NumPy, torch and CUDA RNG states in checkpoints and restores them on resume.

    Lightning restores model, optimizer, scheduler and loop state but not the random generators, so
    dropout masks or sampled labels after a resume would differ from the uninterrupted run. Every
    rank's states are gathered into the checkpoint (Lightning writes it from rank 0 only) and each
    rank gets its own back; a run resumed with a different number of processes reuses rank 0's. The
    states are applied at the first training batch after loading, which is the point where the
    uninterrupted run continued from the same state (data loading and sanity checks in between may
    draw random numbers of their own). NumPy's state is stored as a tensor so the checkpoint stays
    loadable with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Capture the RNG states of every rank (Lightning calls this on all ranks when it saves)."""
        import torch.distributed as dist

        local = _local_rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            return {"per_rank": gathered}
        return {"per_rank": [local]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Stash the states; they are applied at the next training batch."""
        self._pending = list(state_dict["per_rank"])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Apply this rank's stashed states once, right before the first batch after a resume."""
        if self._pending is None:
            return
        per_rank, self._pending = self._pending, None
        if len(per_rank) != trainer.world_size:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"the checkpoint holds the RNG states of {len(per_rank)} processes and this run has "
                f"{trainer.world_size}; every process continues from rank 0's states"
            )
            _apply_rng_state(per_rank[0])
        else:
            _apply_rng_state(per_rank[trainer.global_rank])


class FiniteLossGuard(L.Callback):
    """Stops the run with one clear line when the training loss becomes NaN or infinite."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Check the loss the training step returned."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {batch_idx}); lower the learning rate or enable trainer.gradient_clip_val"
            )


class ThroughputCallback(L.Callback):
    """Logs samples/s and tokens/s of training and records a summary with peak memory.

    Tokens are counted from a batch's ``input_ids`` (or the first tensor) as batch x sequence length.
    The first ``warmup`` batches are left out of the summary, which is what a benchmark should quote.

    Args:
        warmup: Batches to skip before measuring.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.summary: dict[str, float] = {}
        self._start = 0.0
        self._fit_start = 0.0
        self._last = 0.0
        self._samples = 0
        self._tokens = 0
        self._seen = 0

    @staticmethod
    def _count(batch: Any) -> tuple[int, int]:
        tensor = None
        if isinstance(batch, dict):
            tensor = batch.get("input_ids", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
        elif isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
            tensor = batch[0]
        elif isinstance(batch, torch.Tensor):
            tensor = batch
        if tensor is None or tensor.ndim == 0:
            return 0, 0
        samples = int(tensor.shape[0])
        tokens = samples * int(tensor.shape[1]) if tensor.ndim >= 2 and not tensor.is_floating_point() else 0
        return samples, tokens

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Accumulate counts after the warm-up and log the running rates."""
        now = time.perf_counter()
        self._seen += 1
        # perf/elapsed_s lets an analysis read the wall-clock time at which a loss was reached
        pl_module.log("perf/elapsed_s", now - self._fit_start, on_step=True, on_epoch=False, rank_zero_only=True)
        if self._seen <= self.warmup:
            self._start = now
            return
        samples, tokens = self._count(batch)
        world = trainer.world_size
        self._samples += samples * world
        self._tokens += tokens * world
        elapsed = max(now - self._start, 1e-9)
        metrics = {"perf/samples_per_sec": self._samples / elapsed}
        if self._tokens:
            metrics["perf/tokens_per_sec"] = self._tokens / elapsed
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True)
        self._last = now

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the wall clock of the run."""
        self._fit_start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the summary: rates over the measured batches and peak memory."""
        elapsed = max(self._last - self._start, 1e-9)
        self.summary = {"measured_batches": float(max(self._seen - self.warmup, 0))}
        if self._samples:
            self.summary["samples_per_sec"] = self._samples / elapsed
        if self._tokens:
            self.summary["tokens_per_sec"] = self._tokens / elapsed
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            self.summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        else:
            import resource

            # ru_maxrss is in KiB on Linux
            self.summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class PlainProgressBar(ProgressBar):
    """A progress bar for logs and non-terminals: one line every ``every`` steps (and at the end).

    Args:
        every: Print every this many optimizer steps; 0 picks about 20 lines per run.
        stream: Where to print (stdout by default).
    """

    def __init__(self, every: int = 0, stream: Any = None) -> None:
        super().__init__()
        self.every = every
        self.stream = stream or sys.stdout
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        """Stop printing (Lightning calls this on non-zero ranks and during sanity checks)."""
        self._enabled = False

    def enable(self) -> None:
        """Resume printing."""
        self._enabled = True

    def _total(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        batches = trainer.num_training_batches
        if trainer.max_epochs and math.isfinite(batches):
            return int(batches * trainer.max_epochs // max(trainer.accumulate_grad_batches, 1))
        return None

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self.stream, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock and pick the print interval."""
        self._start = time.perf_counter()
        self._last_step = trainer.global_step
        total = self._total(trainer)
        if not self.every:
            self.every = max(1, (total or 200) // 20)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Print one line every ``every`` optimizer steps."""
        step = trainer.global_step
        if step == self._last_step or step % self.every:
            return
        self._last_step = step
        total = self._total(trainer)
        elapsed = time.perf_counter() - self._start
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        eta = ""
        if total:
            done = max(step - getattr(self, "_first_step", 0), 1)
            eta = f" | eta {time.strftime('%H:%M:%S', time.gmtime(elapsed / done * max(total - step, 0)))}"
        of_total = f"/{total}" if total else ""
        self._print(f"step {step}{of_total} | epoch {trainer.current_epoch} | {shown}{eta}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the validation metrics."""
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if metrics:
            shown = " | ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()))
            self._print(f"validation at step {trainer.global_step} | {shown}")


def _fmt(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
