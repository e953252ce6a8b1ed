"""keel's `lightning` command: runs keel experiments, hands everything else to lightning-sdk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel.core.testing.plugin import BORING_YAML

FAKE_SDK = """
import sys
def main():
    print("lightning-sdk got", sys.argv[1:])
    return 0
"""


@pytest.fixture
def fake_sdk(tmp_path: Path) -> Path:
    """A stand-in lightning-sdk distribution whose `lightning` console script records its arguments."""
    site = tmp_path / "site"
    info = site / "lightning_sdk-9.9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning-sdk\nVersion: 9.9.9\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nlightning = fake_sdk_cli:main\n")
    (site / "fake_sdk_cli.py").write_text(FAKE_SDK)
    return site


def _lightning(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEL_RUNS_DIR": str(cwd / "runs"), "CI": "1"}
    env.pop("KEEL_RUN_DIR", None)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "keel.core.lightning_command", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_lightning_run_runs_a_keel_experiment(tmp_path: Path, fake_sdk: Path) -> None:
    (tmp_path / "experiments" / "boring").mkdir(parents=True)
    (tmp_path / "experiments" / "boring" / "config.yaml").write_text(
        BORING_YAML.replace("max_steps: 8", "max_steps: 2")
    )
    done = _lightning(["run", "boring"], tmp_path, fake_sdk)  # keel wins even with lightning-sdk installed
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run_dir:" in done.stdout
    assert "lightning-sdk got" not in done.stdout
    assert len(list((tmp_path / "runs" / "boring").iterdir())) == 1


def test_other_invocations_go_to_lightning_sdk(tmp_path: Path, fake_sdk: Path) -> None:
    done = _lightning(["login", "--key", "abc"], tmp_path, fake_sdk)
    assert done.returncode == 0, done.stderr
    assert "lightning-sdk got ['login', '--key', 'abc']" in done.stdout
    # `lightning run app.py` is not a keel experiment: it belongs to lightning-sdk
    done = _lightning(["run", "app.py"], tmp_path, fake_sdk)
    assert "lightning-sdk got ['run', 'app.py']" in done.stdout


def test_without_lightning_sdk_a_clear_message(tmp_path: Path) -> None:
    pytest.importorskip("keel.core")
    if any(ep.dist and ep.dist.metadata["Name"] == "lightning-sdk" for ep in _console_scripts()):
        pytest.skip("the real lightning-sdk is installed here")
    done = _lightning(["login"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "lightning-sdk is not installed" in done.stderr
    assert "lightning run <experiment>" in done.stderr


def _console_scripts():  # type: ignore[no-untyped-def]
    from importlib.metadata import entry_points

    return entry_points(group="console_scripts", name="lightning")
