"""load_trained rebuilds a finished run's model from resolved.yaml and its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.core.errors import CheckpointError, ConfigError
from keel.core.runner import load_trained, run


def test_rebuilt_model_has_the_trained_weights(boring_experiment: Path, runs_dir: Path) -> None:
    result = run(str(boring_experiment))
    module = load_trained(result.run_dir)
    saved = torch.load(Path(result.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert saved.keys() == module.state_dict().keys()
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    assert not module.training
    fresh = load_trained(result.run_dir, checkpoint="best")
    assert isinstance(fresh, type(module))


def test_missing_run_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resolved.yaml"):
        load_trained(tmp_path)
    (tmp_path / "resolved.yaml").write_text("model: {_target_: keel.core.testing.BoringModule}\n")
    with pytest.raises(CheckpointError, match="not found"):
        load_trained(tmp_path)
