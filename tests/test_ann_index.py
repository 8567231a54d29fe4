"""ANN policies through a real index: kinds chosen, removals never returned, policy changes, info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrieval
from retrieval.ann_lifecycle import parse_size, plan, make_policy
from retrieval.cli import app
from retrieval.errors import MMSearchError

from .conftest import TINY_MODEL, make_image


def _paths(hits) -> set[str]:
    return {Path(h.path).name for h in hits}


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_removed_and_updated_items_never_come_back(kind: str, image_folder: Path, tiny_encoder) -> None:
    idx = retrieval.create_index(encoder=tiny_encoder, ann=kind)
    idx.add_folder(image_folder)
    assert idx.store.manifest.ann["type"] == kind
    removed = sorted(image_folder.rglob("*.png"))[:2]
    for p in removed:
        p.unlink()
    changed = image_folder / "img00.jpg"
    make_image(1234).save(changed, quality=95)  # new content under an old id
    report = idx.add_folder(image_folder)
    assert (report.removed, report.updated) == (2, 1)
    for seed in range(12):
        hits = idx.search_vector(tiny_encoder.encode_images([make_image(seed)])[0], k=12)
        assert not _paths(hits) & {p.name for p in removed}
        assert len(hits) == len({h.id for h in hits}) == 10  # no duplicates from stale HNSW copies
    best = idx.search_image(changed, k=1)[0]
    assert Path(best.path).name == "img00.jpg" and best.score == pytest.approx(1.0, abs=1e-4)
    assert idx.verify().ok


def test_policy_change_rebuilds_and_info_reports_it(image_folder: Path, tiny_encoder) -> None:
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(image_folder)
    ann = idx.store.manifest.ann
    assert ann["type"] == "flat" and ann["policy"]["ann"] == "auto" and "auto" in ann["rule"]
    before = [h.id for h in idx.search_text("blue", k=5)]
    ann = idx.configure_ann(ann="hnsw", target_recall=0.9)
    assert (ann["type"], ann["policy"]["target_recall"], ann["target_recall"]) == ("hnsw", 0.9, 0.9)
    assert ann["measured_recall"] >= 0.9 and "efSearch" in ann["search"]
    again = retrieval.open_index(encoder=tiny_encoder)
    assert [h.id for h in again.search_text("blue", k=5)] == before  # exact re-ranking: same answer here
    runner = CliRunner()
    out = runner.invoke(app, ["info"])
    assert out.exit_code == 0 and "hnsw" in out.stdout and "recall@10" in out.stdout
    info = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    assert info["ann"]["policy"]["ann"] == "hnsw"


def test_cli_index_accepts_ann_options(image_folder: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["index", str(image_folder), "--model", TINY_MODEL, "-q", "--ann", "ivf", "--max-memory", "1GiB"])
    assert out.exit_code == 0, out.output
    ann = json.loads(runner.invoke(app, ["info", "--json"]).stdout)["ann"]
    # 12 items are too few to train inverted lists: exact until there are enough, and the rule says so.
    assert ann["type"] == "flat" and "enough" in ann["rule"]
    assert ann["policy"] == {"ann": "ivf", "max_memory": 2**30, "target_recall": 0.95}
    bad = runner.invoke(app, ["index", str(image_folder), "--ann", "lsh"])
    assert bad.exit_code == 1 and "lsh" in bad.stderr
    bad = runner.invoke(app, ["index", str(image_folder), "--max-memory", "lots"])
    assert bad.exit_code == 1 and "lots" in bad.stderr


def test_plan_grows_from_flat_to_ivf_to_pq() -> None:
    policy = make_policy("auto", "1GiB")
    assert plan(policy, 5_000, 512).type == "flat"
    assert plan(policy, 150_000, 512).type == "ivf"
    assert plan(policy, 200_000, 512).type == "ivfpq"  # from 200k items fast-scan codes answer sooner
    assert plan(policy, 1_000_000, 512).type == "ivfpq"  # 2 GB of vectors > 1 GiB
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("2GB") == 2 * 10**9 and parse_size("1000") == 1000
    with pytest.raises(MMSearchError):
        parse_size("12 parsecs")
