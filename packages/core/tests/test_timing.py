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


def test_run_facts_render_as_the_measured_on_line() -> None:
    from keel.core.testing.timing import measured_on, run_facts

    facts = run_facts("cpu")
    assert set(facts) == {"device", "torch", "cpu_cores", "threads", "load_average", "command"}
    line = measured_on({**facts, "cpu_cores": 2, "threads": 1, "load_average": 3.94, "command": "python b.py"}, "nox")
    assert line.startswith("Measured on cpu (2 cores, 1 torch thread(s), load average 3.9) with torch ")
    assert line.endswith("(`python b.py`):")
    # a result saved before these facts were recorded names the default command
    assert (
        measured_on({"device": "cuda", "torch": "2.x"}, "nox -s bench")
        == "Measured on cuda with torch 2.x (`nox -s bench`):"
    )
