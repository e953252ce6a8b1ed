"""Samplers and loaders that let a run resume mid-epoch at the exact batch it stopped at.

Lightning saves the ``state_dict()`` of every training dataloader that has one in the fit loop's
checkpoint state and hands it back through ``load_state_dict()`` when it resumes. With a sized
loader Lightning does not prefetch, so the number of batches the loader has yielded in the current
epoch equals the number of batches the training loop consumed when a checkpoint is written.

The order of the samples is a pure function of ``(seed, epoch)`` and does not touch the global
RNG, so the resumed run sees the same batches as the uninterrupted one. The sampler subclasses
:class:`~torch.utils.data.DistributedSampler`, which tells Lightning not to replace it, and shards
the permutation across ranks itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A seeded, optionally shuffled, rank-sharded sampler that can skip its first indices.

    Args:
        dataset: The map-style dataset to sample from.
        num_replicas: World size; each rank sees ``len(dataset) // num_replicas`` samples.
        rank: This process's global rank.
        shuffle: Shuffle with a permutation seeded by ``seed + epoch``.
        seed: Base seed of the permutation.
        drop_last: Drop the tail so every rank gets the same number of samples.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def indices(self) -> list[int]:
        """The indices this rank visits in the current epoch, before any skipping."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        order = (
            order[: self.total_size]
            if self.drop_last
            else (order * (1 + self.total_size // max(n, 1)))[: self.total_size]
        )
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        order = self.indices()
        skip, self.skip = self.skip, 0  # a skip applies to one pass only
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a :class:`ResumableSampler` with a state dict.

    ``state_dict()`` records the epoch and how many batches of it were yielded; ``load_state_dict()``
    makes the next pass start right after them. Batches must all have the same size (``drop_last``)
    so that skipping ``k`` batches is skipping ``k * batch_size`` indices.
    """

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, batch_size: int, **kwargs: Any) -> None:
        kwargs["drop_last"] = True
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._yielded = sampler.skip // self.batch_size  # type: ignore[operator]
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position of the loader: the epoch and the number of batches already yielded in it."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"epoch": int(sampler.epoch), "batches_yielded": int(self._yielded), "seed": int(sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next pass continue the saved epoch right after the batches already seen."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        if int(state.get("seed", sampler.seed)) != sampler.seed:
            raise ValueError(f"checkpoint was written with data seed {state['seed']}, this run uses {sampler.seed}")
        sampler.set_epoch(int(state["epoch"]))
        sampler.skip = int(state["batches_yielded"]) * int(self.batch_size)  # type: ignore[arg-type]
        self._yielded = int(state["batches_yielded"])


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    **loader_kwargs: Any,
) -> ResumableDataLoader:
    """Build a training loader that resumes mid-epoch exactly.

    Args:
        dataset: A map-style dataset.
        batch_size: Per-process batch size.
        shuffle: Shuffle each epoch with a permutation seeded by ``seed + epoch``.
        seed: Seed of the data order (independent of the global RNG).
        num_replicas: World size (pass ``trainer.world_size``).
        rank: Global rank (pass ``trainer.global_rank``).
        **loader_kwargs: Forwarded to :class:`~torch.utils.data.DataLoader` (``num_workers``, ``collate_fn`` ...).
    """
    sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    return ResumableDataLoader(dataset, sampler=sampler, batch_size=batch_size, **loader_kwargs)
