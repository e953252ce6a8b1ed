"""Benchmark helpers: the recorded command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.core.testing.timing import command_line


def test_command_line_is_relative_to_the_checkout_and_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "packages" / "x" / "benchmarks" / "bench.py"
    assert command_line([str(script), "--repeats", "9"]) == "python packages/x/benchmarks/bench.py --repeats 9"
    assert (
        command_line(["/elsewhere/bench.py", "--note", "two words"]) == "python /elsewhere/bench.py --note 'two words'"
    )
