"""Bad input gets one clear line and a non-zero exit, and leaves earlier runs untouched.

Usage and config errors exit with 2; no traceback is shown unless ``--debug``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from keel.core.cli import main
from keel.core.testing.plugin import BORING_YAML

TEXT_YAML = """\
description: tiny LM over a text folder
model:
  _target_: keel.core.testing.BoringModule
  vocab_size: 300
data:
  _target_: keel.core.data.TextDataModule
  data_dir: {data_dir}
  vocab_size: 300
  block_size: 8
  batch_size: 2
  progress: false
trainer:
  accelerator: cpu
  max_steps: 2
logging:
  tensorboard: false
  progress_bar: none
"""


@pytest.fixture
def setup(tmp_path: Path, runs_dir: Path) -> dict[str, Path]:
    """A boring experiment, an earlier finished run of it, and a text experiment over a given folder."""
    boring = tmp_path / "boring.yaml"
    boring.write_text(BORING_YAML.replace("max_steps: 8", "max_steps: 2"))
    assert main(["run", str(boring)]) == 0
    earlier = next((runs_dir / "boring").iterdir())
    corrupt = tmp_path / "corrupt.ckpt"
    good = earlier / "checkpoints" / "last.ckpt"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    binary_dir = tmp_path / "binary"
    binary_dir.mkdir()
    (binary_dir / "train.txt").write_bytes(bytes(range(256)) * 64)
    (binary_dir / "val.txt").write_bytes(bytes(range(256)) * 8)
    missing = tmp_path / "text_missing.yaml"
    missing.write_text(TEXT_YAML.format(data_dir=tmp_path / "no-such-folder"))
    binary = tmp_path / "text_binary.yaml"
    binary.write_text(TEXT_YAML.format(data_dir=binary_dir))
    nan = tmp_path / "nan.yaml"
    nan.write_text(BORING_YAML.replace("hidden: 16", "hidden: 16\n  lr: 1.0e+30"))
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    return {
        "boring": boring,
        "earlier": earlier,
        "corrupt": corrupt,
        "missing": missing,
        "binary": binary,
        "nan": nan,
        "bad_yaml": bad_yaml,
        "runs": runs_dir,
    }


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


# (case id, argv template, expected exit code, a fragment the one-line message must contain)
CASES = [
    ("unknown experiment", ["run", "no/such_experiment"], 2, "unknown experiment 'no/such_experiment'"),
    (
        "unknown key",
        ["run", "{boring}", "trainer.max_step=3"],
        2,
        "unknown key 'trainer.max_step'; did you mean 'max_steps'",
    ),
    ("wrong type", ["run", "{boring}", "trainer.max_steps=lots"], 2, "'trainer.max_steps' must be int"),
    ("unknown model argument", ["run", "{boring}", "model.hiden=3"], 2, "did you mean 'hidden'"),
    ("target outside allow-list", ["run", "{boring}", "model._target_=os.system"], 2, "is not allowed"),
    (
        "unknown strategy",
        ["run", "{boring}", "trainer.strategy=dpp"],
        2,
        "unknown trainer.strategy 'dpp'; did you mean 'ddp'",
    ),
    ("deepspeed without cuda", ["run", "{boring}", "trainer.strategy=deepspeed_stage_2"], 2, "needs a CUDA device"),
    ("unknown accelerator", ["run", "{boring}", "trainer.accelerator=tpux"], 2, "trainer:"),
    ("missing data path", ["run", "{missing}"], 1, "no-such-folder"),
    ("binary text file", ["run", "{binary}"], 1, "train.txt"),
    ("nan loss", ["run", "{nan}"], 1, "training loss became"),
    ("resume missing checkpoint", ["run", "{boring}", "resume=/no/such/last.ckpt"], 1, "checkpoint not found"),
    ("resume corrupt checkpoint", ["run", "{boring}", "resume={corrupt}"], 1, "corrupt or unreadable"),
    ("resume last without runs", ["run", "{nan}", "resume=last"], 1, "no earlier run of 'nan'"),
    ("malformed override", ["run", "{boring}", "trainer.max_steps"], 2, "must look like key=value"),
    ("unknown option", ["run", "{boring}", "--tinyy"], 2, "unknown option --tinyy"),
    ("no tiny config", ["run", "{boring}", "--tiny"], 2, "has no tiny.yaml"),
    ("malformed yaml", ["run", "{bad_yaml}"], 2, "cannot read"),
    ("unknown command", ["rnu", "{boring}"], 2, "unknown command 'rnu'; did you mean 'run'"),
    ("export missing run", ["export", "/no/such/run"], 1, "checkpoint not found"),
    ("run without experiment", ["run"], 2, "needs an experiment"),
]


@pytest.mark.parametrize(("argv", "code", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str], code: int, fragment: str
) -> None:
    before = _snapshot(setup["earlier"])
    capsys.readouterr()
    argv = [a.format(**{k: str(v) for k, v in setup.items()}) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or not err[0].startswith("error:") and err[-1].startswith("error:"), err
    message = err[-1]
    assert message.startswith("error: "), message
    assert fragment in message, message
    assert "Traceback" not in "\n".join(err)
    assert _snapshot(setup["earlier"]) == before, "an earlier run was modified"


def test_suite_has_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15


def test_real_process_exit_code_and_debug_traceback(setup: dict[str, Path]) -> None:
    base = [sys.executable, "-m", "keel.core", "run", str(setup["boring"]), "trainer.max_step=3"]
    done = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: command line: unknown key 'trainer.max_step'; did you mean 'max_steps'?"
    ]
    debug = subprocess.run([*base, "--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr


def test_nan_run_leaves_no_checkpoint_named_last_with_nan(setup: dict[str, Path]) -> None:
    main(["run", str(setup["nan"])])
    for last in (setup["runs"] / "nan").glob("*/checkpoints/last.ckpt"):
        state = torch.load(last, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
