"""Trainer assembly: strategies (DeepSpeed presets and custom configs), callbacks, loggers, checkpoint IO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

from keel.core.callbacks import FiniteLossGuard, PlainProgressBar, RNGStateCallback, ThroughputCallback
from keel.core.checkpoint import AtomicCheckpointIO
from keel.core.config import find_experiment, load_config
from keel.core.errors import ConfigError
from keel.core.testing import RunIf
from keel.core.testing.plugin import BORING_YAML
from keel.core.trainer import DEEPSPEED_PRESETS, build_trainer, deepspeed_strategy, load_deepspeed_config

EXPECTED_ZERO = {
    "deepspeed_stage_1": (1, False, False),
    "deepspeed_stage_2": (2, False, False),
    "deepspeed_stage_2_offload": (2, True, False),
    "deepspeed_stage_3": (3, False, False),
    "deepspeed_stage_3_offload": (3, True, True),
}


@RunIf(deepspeed=True)
@pytest.mark.parametrize("preset", DEEPSPEED_PRESETS)
def test_deepspeed_presets_follow_lightning_registry(preset: str) -> None:
    zero = deepspeed_strategy(preset).config["zero_optimization"]
    stage, offload_optimizer, offload_params = EXPECTED_ZERO[preset]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload_optimizer
    assert ("offload_param" in zero) == offload_params


@RunIf(deepspeed=True)
def test_custom_deepspeed_dict_refines_the_preset(tmp_path: Path) -> None:
    custom = {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 1000}, "wall_clock_breakdown": True}
    config = deepspeed_strategy("deepspeed_stage_3", custom).config
    assert config["zero_optimization"]["stage"] == 3, "the preset's stage survives the merge"
    assert config["zero_optimization"]["overlap_comm"] is False
    assert config["zero_optimization"]["reduce_bucket_size"] == 1000
    assert config["wall_clock_breakdown"] is True
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(custom))
    assert load_deepspeed_config(str(path)) == custom


@pytest.mark.parametrize(
    "key", ["gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "gradient_clipping", "bf16"]
)
def test_lightning_owned_deepspeed_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' comes from"):
        load_deepspeed_config({key: 1})


def test_hf_style_auto_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="'auto' values"):
        load_deepspeed_config({"zero_optimization": {"reduce_bucket_size": "auto"}})


ENGINE = textwrap.dedent(
    """
    import os, torch, deepspeed
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561", "RANK": "0", "WORLD_SIZE": "1"}
    for key, value in {**rendezvous, "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    from keel.core.trainer import deepspeed_strategy
    config = dict(deepspeed_strategy("deepspeed_stage_2").config)
    # the keys Lightning adds from the Trainer when it runs the strategy
    config.update(train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1)
    config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    print("RESULT", engine.zero_optimization_stage(), losses[0], losses[-1])
    """
)


@RunIf(deepspeed=True, linux=True)
def test_deepspeed_engine_trains_on_cpu_with_keel_zero2_config(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines, done.stdout[-3000:]
    stage, first, last = lines[0].split()[1:]
    assert int(stage) == 2
    assert float(last) < 0.2 * float(first)


def _boring_cfg(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "boring.yaml"
    path.write_text(BORING_YAML)
    return load_config(find_experiment(str(path)), list(overrides))


def test_trainer_gets_standard_callbacks_loggers_and_atomic_io(tmp_path: Path) -> None:
    cfg = _boring_cfg(tmp_path, "logging.tensorboard=true", "trainer.accumulate_grad_batches=2")
    trainer = build_trainer(cfg, tmp_path / "run")
    kinds = [type(c) for c in trainer.callbacks]
    for kind in (RNGStateCallback, FiniteLossGuard, LearningRateMonitor, PlainProgressBar, ThroughputCallback):
        assert kind in kinds, kind
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    periodic, best = checkpoints
    assert periodic._every_n_train_steps == 4
    assert periodic.save_last
    assert periodic.save_top_k == -1
    assert best.monitor == "val/loss"
    assert best.save_top_k == 1
    assert {type(lg) for lg in trainer.loggers} == {CSVLogger, TensorBoardLogger}
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.accumulate_grad_batches == 2
    assert trainer.max_steps == 8


def test_extra_callbacks_from_config_must_be_callbacks(tmp_path: Path) -> None:
    cfg = _boring_cfg(tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.callbacks = [{"_target_": "keel.core.testing.SlowDown", "seconds": 0.0}]
    assert any(type(c).__name__ == "SlowDown" for c in build_trainer(cfg, tmp_path / "a").callbacks)
    cfg.callbacks = [{"_target_": "torch.nn.Identity"}]
    with pytest.raises(ConfigError, match=r"callbacks\[0\].*is not a Lightning Callback"):
        build_trainer(cfg, tmp_path / "b")


def test_a_sophia_optimizer_brings_its_hessian_callback(tmp_path: Path) -> None:
    from keel.core.optim import SophiaHessianCallback

    sophia = "model.optimizer={_target_: keel.core.optim.SophiaG, _partial_: true, lr: 0.01}"
    trainer = build_trainer(_boring_cfg(tmp_path, f"+{sophia}"), tmp_path / "run")
    assert [type(c) for c in trainer.callbacks].count(SophiaHessianCallback) == 1
    # a configured callback (here with its own k) is kept, and not doubled
    configured = "callbacks=[{_target_: keel.core.optim.SophiaHessianCallback, update_period: 3}]"
    trainer = build_trainer(_boring_cfg(tmp_path, f"+{sophia}", configured), tmp_path / "run2")
    (callback,) = [c for c in trainer.callbacks if isinstance(c, SophiaHessianCallback)]
    assert callback.update_period == 3
    plain = build_trainer(_boring_cfg(tmp_path), tmp_path / "run3")
    assert not any(isinstance(c, SophiaHessianCallback) for c in plain.callbacks)
