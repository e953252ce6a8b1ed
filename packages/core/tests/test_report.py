"""README result blocks and the repository index's one-line summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.errors import ConfigError
from keel.core.report import headline, replace_block, update_index


def test_named_blocks_are_filled_independently(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n<!-- results:quadratic:start -->\nold a\n<!-- results:quadratic:end -->\n"
        "middle\n<!-- results:start -->\nold b\n<!-- results:end -->\n"
    )
    replace_block(readme, "new a", name="quadratic")
    replace_block(readme, "new b")
    text = readme.read_text()
    assert "<!-- results:quadratic:start -->\nnew a\n<!-- results:quadratic:end -->" in text
    assert "<!-- results:start -->\nnew b\n<!-- results:end -->" in text
    assert "old" not in text
    assert "middle" in text
    with pytest.raises(ConfigError, match="results:other:start"):
        replace_block(readme, "x", name="other")


def test_headline_summarises_runs_and_sweeps() -> None:
    run = {"metrics": {"val/loss": 4.25, "val/ppl": 70.1, "train/loss": 4.0}, "throughput": {"tokens_per_sec": 7100.4}}
    assert headline(run) == "val/loss 4.250, val/ppl 70.100, 7,100 tokens/s"
    sweep = {"target": 5.1, "arms": {"adamw": {"ratio": 1.0}, "sophiag": {"ratio": 0.8}, "sophiah": {"ratio": None}}}
    assert headline(sweep) == "steps to the reference's loss: sophiag 0.80x"
    assert headline({"headline": "student keeps 91% of the teacher", "arms": {}}) == "student keeps 91% of the teacher"


def test_index_rows_list_every_results_block(tmp_path: Path) -> None:
    experiments = tmp_path / "experiments"
    for name in ("area/two_corpora", "area/unrun"):
        (experiments / name).mkdir(parents=True)
        (experiments / name / "config.yaml").write_text(f"description: {name.split('/')[1]} experiment\n")
    folder = experiments / "area" / "two_corpora"
    (folder / "results.json").write_text(json.dumps({"command": "keel sweep area/two_corpora", "headline": "a 0.5"}))
    second = {"command": "keel sweep area/two_corpora --profile other", "headline": "a 0.7"}
    (folder / "results-other.json").write_text(json.dumps(second))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    update_index(readme, experiments)
    rows = {line.split("|")[1].strip(): line for line in readme.read_text().splitlines() if line.startswith("| [")}
    assert rows["[area/two_corpora](experiments/area/two_corpora/README.md)"] == (
        "| [area/two_corpora](experiments/area/two_corpora/README.md) | two_corpora experiment | a 0.5<br>other: a 0.7 "
        "| `keel sweep area/two_corpora`<br>`keel sweep area/two_corpora --profile other` |"
    )
    unrun = rows["[area/unrun](experiments/area/unrun/README.md)"]
    assert unrun.endswith("| unrun experiment | not run yet | `keel run area/unrun` |")
