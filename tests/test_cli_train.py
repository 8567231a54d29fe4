"""``mmsearch synth``, ``train`` and ``eval`` driven through Typer's test runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from retrieval.cli.training import register
from retrieval.errors import DataError, MMSearchError

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_synth_train_eval_round_trip(tmp_path: Path) -> None:
    app = _app()
    world = tmp_path / "world"
    res = runner.invoke(app, ["synth", str(world), "-n", "240", "--image-size", "32", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["n_images"] == 240 and sum(info["splits"].values()) == 240

    out = tmp_path / "model"
    res = runner.invoke(app, ["train", str(world), "--out", str(out), "--model", "mmsearch-tiny",
                              "--epochs", "2", "--batch-size", "32", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] == 2 and summary["best_epoch"] in (1, 2)
    assert (out / "open_clip_config.json").is_file() and (out / "last" / "train_state.pt").is_file()

    res = runner.invoke(app, ["eval", str(world / "captions.csv"), "--model", str(out), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert set(metrics["text_to_image"]) == {"R@1", "R@5", "R@10"}
    assert metrics["zero_shot_classes"] == 6 and metrics["n_images"] > 0

    res = runner.invoke(app, ["eval", str(world), "--model", str(out)])
    assert res.exit_code == 0 and "text->image" in res.stdout and "zero-shot" in res.stdout

    # --resume continues to epoch 3 only.
    res = runner.invoke(app, ["train", str(world), "--out", str(out), "--resume", "--epochs", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs_run"] == 1


def test_errors_are_library_errors(tmp_path: Path) -> None:
    app = _app()
    (tmp_path / "empty.csv").write_text("image,caption\n")
    res = runner.invoke(app, ["train", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    res = runner.invoke(app, ["train", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "m"),
                              "--model", "mmsearch-tiny", "--from", "mmsearch-tiny"])
    assert isinstance(res.exception, MMSearchError) and "not both" in str(res.exception)


def test_registering_imports_no_torch() -> None:
    code = ("import sys, typer; from retrieval.cli.training import register; register(typer.Typer()); "
            "print(any(m in sys.modules for m in ('torch', 'open_clip', 'retrieval.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
