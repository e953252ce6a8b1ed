"""The DataModule base of keel's diffusion data: named splits served by seeded loaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """Serves ``self.splits["train" | "val" | "test"]``, filled by the subclass's ``setup``.

    The subclass's hyperparameters must include ``batch_size``, ``eval_batch_size``, ``num_workers``
    and ``seed``. Training batches are shuffled by a generator seeded with ``seed`` (so a run's data
    order is reproducible) and drop a ragged last batch; evaluation batches keep their order.
    """

    splits: dict[str, Dataset]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        return DataLoader(
            self.splits[split],
            batch_size=batch,
            shuffle=shuffle,
            drop_last=shuffle and len(self.splits[split]) > batch,
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """The shuffled training split."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The validation split, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self._loader("test", shuffle=False)
