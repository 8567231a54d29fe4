"""`mmsearch index --engine ray` builds the index a local run builds, on a 2-CPU local Ray cluster.

Same ids and paths, vectors at cosine >= 0.999, the same skipped files; the
incremental rules hold; a worker that dies has its batch redone; and without
Ray installed the command says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image
from .index_compare import assert_same_index, skipped_lines, snapshot

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster with 2 CPUs for the whole module (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 generated pictures of assorted sizes and formats, a text file named .jpg, a truncated JPEG."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    for i in range(36):
        sub = folder / ("" if i < 12 else "trip" if i < 24 else "trip/day2")
        sub.mkdir(parents=True, exist_ok=True)
        size = (64 + 7 * (i % 9), 48 + 5 * (i % 7))
        ext = (".jpg", ".png", ".webp")[i % 3]
        make_image(1000 + i, size=size).save(sub / f"img{i:02d}{ext}")
    (folder / "readme.jpg").write_text("not a picture at all\n")
    data = (folder / "img00.jpg").read_bytes()
    (folder / "trip" / "broken.jpg").write_bytes(data[: len(data) // 2])
    return folder


def index(folder: Path, name: str, *extra: str):
    result = run("index", str(folder), "--index", name, "-m", TINY_MODEL, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result


RAY = ("--engine", "ray", "--num-workers", "2")


def test_ray_index_equals_local_index(ray_cluster, photos: Path, _private_index_root: Path) -> None:
    ray_report, ray_run = index(photos, "by-ray", *RAY)
    local_report, local_run = index(photos, "by-local")
    for key in ("added", "updated", "removed", "unchanged", "reused", "failed", "encoded", "items"):
        assert ray_report[key] == local_report[key], key
    assert (ray_report["added"], ray_report["failed"]) == (36, 2)
    assert ray_report["skipped"] == local_report["skipped"]
    assert skipped_lines(ray_run.stderr) == skipped_lines(local_run.stderr)
    assert {s["path"] for s in ray_report["skipped"]} == {
        str(photos / "readme.jpg"), str(photos / "trip" / "broken.jpg")
    }
    assert_same_index(snapshot(_private_index_root, "by-ray"), snapshot(_private_index_root, "by-local"))
    assert run("verify", "--index", "by-ray").exit_code == 0


def test_ray_runs_are_incremental(ray_cluster, photos: Path, tmp_path: Path, _private_index_root: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    index(folder, "inc", *RAY)
    before = snapshot(_private_index_root, "inc")

    unchanged, _ = index(folder, "inc", *RAY)  # nothing changed: no Ray job, nothing written
    assert (unchanged["unchanged"], unchanged["failed"], unchanged["encoded"]) == (36, 2, 0)

    make_image(4242, size=(70, 50)).save(folder / "img03.jpg")  # new content: re-embedded, same id
    shutil.copy(folder / "img04.png", folder / "copy-of-04.png")  # same content: vector reused
    (folder / "trip" / "img13.png").rename(folder / "moved-13.png")  # moved: reused, old item removed
    os.unlink(folder / "img05.webp")  # gone: removed
    report, _ = index(folder, "inc", *RAY)
    assert (report["updated"], report["added"], report["reused"], report["removed"]) == (1, 2, 2, 2)
    assert report["encoded"] == 1 and report["unchanged"] == 33
    after = snapshot(_private_index_root, "inc")
    key = str(folder / "img03.jpg")
    assert after[key][0] == before[key][0]
    assert float(np.dot(after[str(folder / "copy-of-04.png")][3], before[str(folder / "img04.png")][3])) > 0.9999
    assert str(folder / "img05.webp") not in after

    # The same changes made by a local run give the same index.
    local = tmp_path / "local"
    shutil.copytree(photos, local)
    index(local, "inc-local")
    make_image(4242, size=(70, 50)).save(local / "img03.jpg")
    shutil.copy(local / "img04.png", local / "copy-of-04.png")
    (local / "trip" / "img13.png").rename(local / "moved-13.png")
    os.unlink(local / "img05.webp")
    index(local, "inc-local")
    local_snap = {k.replace(str(local), str(folder)): v for k, v in snapshot(_private_index_root, "inc-local").items()}
    assert_same_index(after, local_snap)


class _DiesOnce:
    """Stands in for EmbedWorker: the first batch any actor takes kills its process (as a lost node would)."""

    marker: str = ""

    def __init__(self, **kwargs) -> None:
        from retrieval.engine_ray import EmbedWorker

        self.inner = EmbedWorker(**kwargs)

    def __call__(self, batch):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner(batch)
        os.close(fd)
        os._exit(1)


def test_a_dead_worker_has_its_batch_redone(
    ray_cluster, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _private_index_root: Path
) -> None:
    import ray.cloudpickle

    import retrieval.engine_ray as engine

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import tests/
    dies = type("DiesOnce", (_DiesOnce,), {"marker": str(tmp_path / "died")})
    monkeypatch.setattr(engine, "EmbedWorker", dies)
    report, _ = index(photos, "survivor", *RAY)
    assert (tmp_path / "died").exists()  # a worker did die
    assert (report["added"], report["failed"]) == (36, 2)
    index(photos, "reference")
    assert_same_index(snapshot(_private_index_root, "survivor"), snapshot(_private_index_root, "reference"))


def test_without_ray_the_error_says_how_to_install_it(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch, _private_index_root: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as when it is not installed
    result = run("index", str(image_folder), "-m", TINY_MODEL, "--engine", "ray")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1, message
    assert "pip install 'mmsearch[ray]'" in message
    assert not (_private_index_root / "default").exists()  # nothing created, no model loaded for nothing


def test_gpu_actors_never_outnumber_the_cluster_gpus() -> None:
    """With --device auto on a GPU cluster each actor takes a GPU: the pool is capped at the GPU count."""
    from retrieval.engine_ray import RayCfg, _pool_size

    class Cluster:
        def __init__(self, cpus: int, gpus: int) -> None:
            self.resources = {"CPU": cpus, "GPU": gpus}

        def cluster_resources(self) -> dict:
            return self.resources

        def nodes(self) -> list:
            return [{"Alive": True, "Resources": self.resources}]

    assert _pool_size(Cluster(16, 1), RayCfg(device="auto")) == (1, 2)
    assert _pool_size(Cluster(16, 4), RayCfg(device="cuda")) == (4, 2)
    assert _pool_size(Cluster(16, 0), RayCfg(device="auto")) == (8, 2)  # CPU-only: one actor per 2 CPUs
    assert _pool_size(Cluster(16, 0), RayCfg(device="cpu", num_workers=3)) == (3, 5)
