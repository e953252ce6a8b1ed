"""The keel command: list, print-config, export, plugin verbs and package defaults from entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from keel.core.cli import main
from keel.core.testing.plugin import BORING_YAML


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with an experiments/ tree holding one area experiment, as the working directory."""
    folder = tmp_path / "experiments" / "toy" / "boring"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(BORING_YAML.replace("max_steps: 8", "max_steps: 4"))
    (folder / "tiny.yaml").write_text("trainer:\n  max_steps: 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEEL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("KEEL_RUN_DIR", raising=False)
    monkeypatch.delenv("KEEL_EXPERIMENTS_DIR", raising=False)
    return tmp_path


def test_list_shows_experiments_with_descriptions(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toy/boring" in out
    assert "boring model on random tokens" in out


def test_print_config_merges_tiny_and_overrides(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "toy/boring", "--tiny", "--print-config", "seed=11"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 2
    assert cfg["seed"] == 11
    assert cfg["trainer"]["log_every_n_steps"] == 1  # from the experiment over keel-core's default of 10
    assert not (project / "runs").exists(), "--print-config must not create a run"


def test_run_then_export_safetensors(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    assert main(["run", "toy/boring", "--tiny"]) == 0
    run_dir = next((project / "runs" / "toy" / "boring").iterdir())
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    assert resolved["run"]["name"] == run_dir.name
    assert resolved["trainer"]["max_steps"] == 2
    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    tensors = load_file(str(run_dir / "export" / "model.safetensors"))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(tensors) == {"embed.weight", "head.weight", "head.bias"}
    assert torch.equal(tensors["head.weight"], state["head.weight"])


def _fake_plugin(site: Path) -> None:
    info = site / "keel_toy-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: keel-toy\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(
        "[keel.commands]\ntoy = toy_plugin.cli:app\n\n[keel.defaults]\ntoy = toy_plugin\n"
    )
    (site / "toy_plugin").mkdir()
    (site / "toy_plugin" / "__init__.py").write_text("")
    (site / "toy_plugin" / "cli.py").write_text(
        "def app(argv):\n    print('toy verb got', argv)\n    return 3 if argv[:1] == ['fail'] else 0\n"
    )
    (site / "toy_plugin" / "defaults.yaml").write_text("trainer:\n  log_every_n_steps: 123\n  max_steps: 99\n")


def test_plugin_verbs_and_area_defaults_come_from_entry_points(project: Path) -> None:
    site = project / "site"
    _fake_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-m", "keel.core"]
    done = subprocess.run([*run, "toy", "make", "--fast"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "toy verb got ['make', '--fast']" in done.stdout
    failed = subprocess.run([*run, "toy", "fail"], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 3
    # the area's defaults sit between keel-core's and the experiment's: the experiment still wins
    shown = subprocess.run(
        [*run, "run", "toy/boring", "--print-config"], env=env, capture_output=True, text=True, timeout=120
    )
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["trainer"]["max_steps"] == 4  # from the experiment
    assert cfg["trainer"]["log_every_n_steps"] == 1  # from the experiment
    helpless = subprocess.run([*run, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert "toy" in helpless.stdout


def test_area_defaults_apply_below_the_experiment(project: Path) -> None:
    site = project / "site"
    _fake_plugin(site)
    (project / "experiments" / "toy" / "boring" / "config.yaml").write_text(
        BORING_YAML.replace("  log_every_n_steps: 1\n", "").replace("  max_steps: 8\n", "")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run(
        [sys.executable, "-m", "keel.core", "run", "toy/boring", "--print-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["trainer"]["log_every_n_steps"] == 123
    assert cfg["trainer"]["max_steps"] == 99
