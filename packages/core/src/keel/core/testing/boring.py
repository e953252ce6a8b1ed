"""Small, fast stand-ins for real models and data, for tests of the runtime."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from keel.core.data.sampling import resumable_loader


class RandomTokenDataset(Dataset):
    """Fixed random token sequences (seeded), returned as ``{"input_ids", "labels"}``.

    Args:
        size: Number of sequences.
        length: Tokens per sequence.
        vocab_size: Token ids are drawn from ``[0, vocab_size)``.
        seed: Seed of the generator (independent of the global RNG).
    """

    def __init__(self, size: int = 64, length: int = 16, vocab_size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab_size, (size, length), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[index], "labels": self.data[index]}


class BoringDataModule(L.LightningDataModule):
    """A data module over :class:`RandomTokenDataset` with a resumable training loader.

    Args:
        size: Training sequences.
        length: Tokens per sequence.
        vocab_size: Vocabulary size.
        batch_size: Per-process batch size.
        seed: Seed of the data and of the training order.
    """

    def __init__(
        self, size: int = 64, length: int = 16, vocab_size: int = 32, batch_size: int = 4, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set = RandomTokenDataset(size, length, vocab_size, seed)
        self.val_set = RandomTokenDataset(max(size // 4, batch_size), length, vocab_size, seed + 1)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, rank-sharded, resumable batches."""
        trainer = self.trainer
        return resumable_loader(
            self.train_set,
            self.hparams.batch_size,
            seed=self.hparams.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order."""
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class BoringModule(L.LightningModule):
    """A tiny next-token model (embedding, dropout, linear) with one shared ``step``.

    Dropout is on by default so that tests of exact resume also cover the RNG state.

    Args:
        vocab_size: Vocabulary size.
        hidden: Hidden width.
        dropout: Dropout probability.
        lr: SGD-with-momentum learning rate (momentum makes the optimizer state matter on resume).
        optimizer: An optional optimizer factory taking the parameters (overrides ``lr``).
    """

    def __init__(
        self,
        vocab_size: int = 32,
        hidden: int = 16,
        dropout: float = 0.1,
        lr: float = 0.1,
        optimizer: Any = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.embed = nn.Embedding(vocab_size, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the next token at every position."""
        return self.head(self.drop(self.embed(input_ids)))

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Next-token cross-entropy, logged as ``<stage>/loss``."""
        logits = self(batch["input_ids"])[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Training loss of one batch."""
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss of one batch."""
        return self.step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Test loss of one batch."""
        return self.step(batch, "test")

    def configure_optimizers(self) -> Any:
        """SGD with momentum (or the given factory) and a step-wise LR schedule."""
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.parameters())
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SlowDown(L.Callback):
    """Sleeps after every training batch, so a test can interrupt a run at a chosen point.

    Args:
        seconds: Sleep per batch.
    """

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Sleep, so the run can be interrupted at a known point."""
        time.sleep(self.seconds)


class GradientRecorder(L.Callback):
    """Saves the first step's loss and (synchronised) gradients of each rank to ``<run dir>/grads-rank<r>.pt``.

    Gradients are read in ``on_before_optimizer_step``, after DDP's all-reduce, so a test can compare
    a multi-process step with a single-process one over the same global batch.
    """

    def __init__(self) -> None:
        self._loss: torch.Tensor | None = None
        self._done = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Keep the first batch's loss."""
        if self._loss is None:
            self._loss = outputs["loss"].detach().clone()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        """Keep the first step's gradients, after DDP has averaged them."""
        if self._done:
            return
        self._done = True
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self._grads = grads

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write this rank's loss and gradients into the run directory."""
        from pathlib import Path

        path = Path(trainer.default_root_dir) / f"grads-rank{trainer.global_rank}.pt"
        torch.save({"loss": self._loss, "grads": self._grads, "world_size": trainer.world_size}, path)


class StepTimer(L.Callback):
    """Records the wall time between consecutive training batch ends (for benchmarks).

    The times of the latest run are kept on the class, so a benchmark can read them after ``fit``.
    """

    last_times: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the record and start the clock."""
        StepTimer.last_times = []
        self._last = time.perf_counter()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Record the time since the previous batch end."""
        now = time.perf_counter()
        StepTimer.last_times.append(now - self._last)
        self._last = now
