"""Pre-training pairs, then labelled pairs, from one DataModule: the two stages of Chang et al. (2020).

The training loader yields ``steps["pretrain"]`` batches of the pre-training data (the tasks'
pairs, through a :class:`~keel.retrieval.data.RetrievalDataModule` whose ``train_pairs`` is a
:class:`~keel.retrieval.ict_bfs_wlp.TaskMixture`), then ``steps["finetune"]`` batches of the
labelled data, each batch tagged with ``batch["stage"]``; validation and test use the labelled
data module's ``dev`` and ``test`` qrels. Both stages give batches in the same format, so one
:class:`~keel.retrieval.biencoder.BiEncoderModule` loop trains through both.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from torch.utils.data import DataLoader

from keel.core.distill.pipeline import StagedLoader
from keel.core.errors import ConfigError
from keel.retrieval.data.datamodule import RetrievalDataModule

STAGES = ("pretrain", "finetune")


def stage_plan(steps: Mapping[str, int]) -> list[tuple[str, int]]:
    """The stages that run, in order, with their optimizer steps (a stage with 0 steps is skipped).

    Raises:
        ConfigError: On an unknown stage, a negative count, or no fine-tuning steps.
    """
    unknown = sorted(set(steps) - set(STAGES))
    if unknown:
        raise ConfigError(f"steps: unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    if any(int(v) < 0 for v in steps.values()):
        raise ConfigError(f"steps: counts must be >= 0, got {dict(steps)}")
    if int(steps.get("finetune", 0)) <= 0:
        raise ConfigError("steps: finetune must be > 0 (the evaluated model is the fine-tuned one)")
    return [(name, int(steps.get(name, 0))) for name in STAGES if int(steps.get(name, 0)) > 0]


class PretrainFinetuneDataModule(L.LightningDataModule):
    """Pre-training batches, then fine-tuning batches; the fine-tuning data's dev and test splits.

    Args:
        finetune: The labelled data (e.g. a :class:`~keel.retrieval.ict_bfs_wlp.LabelledFraction`
            of the training queries); its dev and test qrels are validated and tested on.
        steps: ``{"pretrain": N, "finetune": M}``; must equal the module's plan.
        pretrain: The pre-training pairs; not read at all when ``steps["pretrain"]`` is 0 (the
            randomly initialised baseline).
    """

    def __init__(
        self,
        finetune: RetrievalDataModule,
        steps: Mapping[str, int],
        pretrain: RetrievalDataModule | None = None,
    ) -> None:
        super().__init__()
        self.plan = stage_plan(steps)
        self.pretrains = any(name == "pretrain" for name, _ in self.plan)
        if self.pretrains and pretrain is None:
            raise ConfigError("data: the plan has pretrain steps but no pretrain: data module")
        self.finetune = finetune
        self.pretrain = pretrain

    def _used(self) -> list[RetrievalDataModule]:
        return [self.pretrain, self.finetune] if self.pretrains and self.pretrain is not None else [self.finetune]

    def prepare_data(self) -> None:
        """Build the corpora that are missing (each data module's ``build``)."""
        for data in self._used():
            data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Read the folders and make the pairs of every stage that runs."""
        for data in self._used():
            data.setup(stage)

    def train_dataloader(self) -> StagedLoader:
        """The plan's batches, stage after stage (a loader shorter than its stage is cycled)."""
        for data in self._used():  # each shards its loader over the trainer's ranks
            data.trainer = self.trainer
        loaders = {"finetune": self.finetune.train_dataloader()}
        if self.pretrains and self.pretrain is not None:
            loaders["pretrain"] = self.pretrain.train_dataloader()
        return StagedLoader([(name, loaders[name], steps) for name, steps in self.plan])

    def val_dataloader(self) -> DataLoader:
        """The labelled data's validation queries."""
        return self.finetune.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The labelled data's test queries."""
        return self.finetune.test_dataloader()
