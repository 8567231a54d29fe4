"""Indexing files named by fsspec URLs (here ``file://``, the offline stand-in for ``s3://``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image
from .index_compare import snapshot

pytest.importorskip("fsspec")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_a_url_folder_indexes_like_the_local_folder(tmp_path: Path, _private_index_root: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        make_image(300 + i).save(folder / ("sub" if i > 2 else "") / f"p{i}.jpg")
    (folder / ".hidden.jpg").write_bytes((folder / "p0.jpg").read_bytes())  # hidden: skipped, as locally
    (folder / "bad.jpg").write_text("no picture")
    url = folder.resolve().as_uri()

    by_url = run("index", url, "--index", "url", "-m", TINY_MODEL, "--precision", "fp32", "--json")
    assert by_url.exit_code == 0, by_url.output
    report = json.loads(by_url.stdout)
    assert (report["added"], report["failed"]) == (5, 1)
    assert report["skipped"] == [{"path": f"{url}/bad.jpg", "reason": "not an image (cannot identify image file)"}]
    by_path = run("index", str(folder), "--index", "path", "-m", TINY_MODEL, "--precision", "fp32")
    assert by_path.exit_code == 0, by_path.output

    a, b = snapshot(_private_index_root, "url"), snapshot(_private_index_root, "path")
    assert sorted(a) == sorted(url + k[len(str(folder.resolve())):] for k in b)
    for key, (item_id, status, error, vec) in a.items():
        twin = b[str(folder.resolve()) + key[len(url):]]
        assert (item_id, status, error) == twin[:3]
        assert vec is None or float(np.dot(vec, twin[3])) > 0.9999

    again = json.loads(run("index", url, "--index", "url", "--json").stdout)
    assert (again["unchanged"], again["added"], again["encoded"]) == (5, 0, 0)
    assert run("verify", "--index", "url").stdout.rstrip().endswith("ok")
