"""The image tower under ONNX Runtime: verified exports, their cache and repair, accuracy floors, auto's choice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import image_choice, image_export
from retrieval.encoder import load_encoder
from retrieval.image_accuracy import MAX_RECALL_DROP, MIN_MEAN_COSINE, measure_accuracy
from retrieval.image_onnx import AUTO_FILE, RECORD_FILE, UNSUPPORTED_FILE, file_digest, image_export_dir

from .conftest import TINY_MODEL, make_image

IMAGES = [make_image(seed) for seed in range(10)]


@pytest.fixture(autouse=True)
def _fresh_process_memos(monkeypatch: pytest.MonkeyPatch):
    """Each test exports and measures on its own, as a new process would; torch's threads are restored."""
    import torch

    monkeypatch.setattr(image_export, "_KNOWN", {})
    monkeypatch.setattr(image_choice, "_MEASURED", {})
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(precision: str, cache_root: Path | None = None):
    """The tiny model on one thread: two threads on a busy shared CPU spend most of their time at barriers."""
    return load_encoder(TINY_MODEL, precision=precision, cache_root=cache_root, threads=1)


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return load_encoder(TINY_MODEL, precision="fp32").encode_images(IMAGES)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def _damaged_quantize(real):
    """A quantiser whose int8 graph is wrong: weights perturbed by noise before quantising."""

    def damaged(source: Path, target: Path) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(source))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.ndim >= 2:
                init.CopyFrom(numpy_helper.from_array(w + rng.normal(0, 3 * float(w.std()) + 1e-3, w.shape)
                                                      .astype(np.float32), init.name))
        noisy = target.with_name("noisy.onnx")
        onnx.save(model, str(noisy))
        real(noisy, target)
        noisy.unlink()

    return damaged


def test_export_is_verified_cached_and_matches_torch(tmp_path: Path, torch_vectors: np.ndarray,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for kind, floor in (("fp32", 0.9999), ("int8", 0.995)):
        enc = load(f"onnx-{kind}", tmp_path)
        assert enc.precision == f"onnx-{kind}" and enc.image_runtime is not None
        assert float(np.mean(_cosines(enc.encode_images(IMAGES), torch_vectors))) >= floor
    directory = image_export_dir(tmp_path, enc.fingerprint)
    record = json.loads((directory / RECORD_FILE).read_text())
    assert record["fingerprint"] == enc.fingerprint
    assert record["kinds"]["fp32"]["passed"] and record["kinds"]["fp32"]["mean_cosine"] >= 0.9999
    assert record["kinds"]["int8"]["passed"] and record["kinds"]["int8"]["mean_cosine"] >= 0.995
    assert record["kinds"]["int8"]["size"] < record["kinds"]["fp32"]["size"]

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(image_export, "export_fp32", no_export)
    again = load("onnx-int8", tmp_path)
    assert again.precision == "onnx-int8"  # read from the cache, not exported again


def test_a_truncated_graph_is_never_run_and_is_exported_again(tmp_path: Path, torch_vectors: np.ndarray) -> None:
    enc = load("onnx-int8", tmp_path)
    graph = image_export_dir(tmp_path, enc.fingerprint) / "int8.onnx"
    whole = graph.read_bytes()
    graph.write_bytes(whole[: len(whole) // 2])
    repaired = load("onnx-int8", tmp_path)
    assert repaired.precision == "onnx-int8"
    record = json.loads(graph.with_name(RECORD_FILE).read_text())
    assert file_digest(graph) == record["kinds"]["int8"]["sha256"] and graph.stat().st_size == len(whole)
    assert float(np.mean(_cosines(repaired.encode_images(IMAGES), torch_vectors))) >= 0.995


def test_a_corrupt_graph_that_cannot_be_repaired_falls_back_to_torch(
        tmp_path: Path, torch_vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    enc = load("onnx-fp32", tmp_path)
    graph = image_export_dir(tmp_path, enc.fingerprint) / "fp32.onnx"
    graph.write_bytes(b"\x08\x07 not a graph")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_export, "export_fp32", disk_full)
    with caplog.at_level(logging.WARNING, logger="retrieval.image_choice"):
        fallback = load("onnx-fp32", tmp_path)
    assert fallback.precision == "fp32" and fallback.image_runtime is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "retrieval.image_choice"]
    assert len(warnings) == 1 and "using torch fp32" in warnings[0].getMessage()
    np.testing.assert_allclose(fallback.encode_images(IMAGES), torch_vectors, atol=1e-6)
    assert not (graph.parent / UNSUPPORTED_FILE).exists()  # a full disk says nothing about the model


def test_a_tower_the_exporter_cannot_handle_is_marked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def unsupported(*args: object) -> None:
        calls.append(1)
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(image_export, "export_fp32", unsupported)
    for _ in range(2):
        enc = load("onnx-int8", tmp_path)
        assert enc.precision == "fp32"
    marker = json.loads((image_export_dir(tmp_path, enc.fingerprint) / UNSUPPORTED_FILE).read_text())
    assert "aten::weird" in marker["reason"] and calls == [1]


def test_an_int8_graph_below_its_floor_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_export, "quantize_int8", _damaged_quantize(image_export.quantize_int8))
    enc = load("onnx-int8", tmp_path)
    assert enc.precision == "fp32" and enc.image_runtime is None
    record = json.loads((image_export_dir(tmp_path, enc.fingerprint) / RECORD_FILE).read_text())
    assert not record["kinds"]["int8"]["passed"] and record["kinds"]["int8"]["mean_cosine"] < 0.995
    assert record["kinds"]["fp32"]["passed"]  # the fp32 graph is still good, and still used
    assert load("onnx-fp32", tmp_path).precision == "onnx-fp32"

    auto = load("auto", tmp_path)
    assert auto.precision != "onnx-int8"
    candidates = auto.auto_choice["candidates"]
    assert candidates["onnx-int8"]["passed"] is False and "images_per_s" not in candidates["onnx-int8"]
    assert candidates[auto.precision]["passed"]


def test_pick_takes_the_fastest_passing_candidate_only() -> None:
    measured = {
        "fp32": {"passed": True, "images_per_s": 10.0},
        "bf16": {"passed": True, "images_per_s": 19.0},
        "onnx-int8": {"passed": False, "images_per_s": 90.0},  # fastest, but below its floor
        "onnx-fp32": {"passed": False, "why": "no export"},
    }
    assert image_choice.pick(measured) == "bf16"
    assert image_choice.pick({"fp32": {"passed": True, "images_per_s": 1.0}}) == "fp32"


def test_auto_choice_is_recorded_reused_and_shown_by_info(image_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli import app

    runner = CliRunner()
    root = tmp_path / "root"
    result = runner.invoke(app, ["index", str(image_folder), "--model", TINY_MODEL, "-q", "--index-dir", str(root),
                                 "--precision", "auto", "--threads", "1"])
    assert result.exit_code == 0, result.output
    fingerprint = load_encoder(TINY_MODEL).fingerprint
    machines = json.loads((image_export_dir(root, fingerprint) / AUTO_FILE).read_text())["machines"]
    (machine, entry), = machines.items()
    assert entry["chosen"] in entry["candidates"] and entry["candidates"][entry["chosen"]]["passed"]
    rates = {n: c["images_per_s"] for n, c in entry["candidates"].items() if c.get("passed")}
    assert entry["chosen"] == max(rates, key=rates.get)

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(image_choice, "measure_candidates", no_measuring)
    again = load("auto", root)
    assert again.precision == entry["chosen"]

    info = runner.invoke(app, ["info", "--index-dir", str(root)])
    assert info.exit_code == 0, info.output
    assert f"--precision auto = {entry['chosen']} on {machine}" in info.stdout
    shown = json.loads(runner.invoke(app, ["info", "--index-dir", str(root), "--json"]).stdout)
    assert shown["image_runtimes"][machine]["chosen"] == entry["chosen"]


def test_onnx_vectors_equal_torch_through_index_and_query(image_folder: Path, tmp_path: Path) -> None:
    from retrieval.api import open_or_create_index

    results = {}
    for precision in ("fp32", "onnx-fp32", "onnx-int8"):
        with open_or_create_index(precision, model=TINY_MODEL, root=tmp_path / "root", precision=precision,
                                  threads=1) as idx:
            idx.add_folder(image_folder)
            assert idx.encoder.precision == precision
            ids = sorted(row.id for row in idx.items(range(1, 100)).values())
            vectors = {idx.item(i).path: idx.item_vector(i) for i in ids}
            hits = [h.path for h in idx.search_text("a red square", k=5)]
            results[precision] = (vectors, hits)
    exact, exact_hits = results["fp32"]
    for precision, floor in (("onnx-fp32", 0.9999), ("onnx-int8", 0.995)):
        vectors, hits = results[precision]
        assert vectors.keys() == exact.keys()
        cosines = [float(np.dot(vectors[p], exact[p])) for p in exact]
        assert min(cosines) >= floor, (precision, min(cosines))
        if precision == "onnx-fp32":
            assert hits == exact_hits


def test_accuracy_floor_on_held_out_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.synthetic import generate_catalogue

    catalogue = generate_catalogue(tmp_path / "world", n_images=60, seed=3, image_size=48)
    reference = load("fp32")
    good = measure_accuracy(reference, load("onnx-int8", tmp_path),
                            catalogue)
    assert good.gallery == len(catalogue.split("test", "unseen")) and good.queries > 0
    assert good.mean_cosine >= MIN_MEAN_COSINE
    assert good.passes == (good.recall_reference - good.recall_candidate <= MAX_RECALL_DROP + 1e-12)
    same = measure_accuracy(reference, reference, catalogue)
    assert same.passes and same.mean_cosine == pytest.approx(1.0, abs=1e-6)

    monkeypatch.setattr(image_export, "quantize_int8", _damaged_quantize(image_export.quantize_int8))
    monkeypatch.setattr(image_export, "FLOORS", {"fp32": 0.9999, "int8": -1.0})  # let the damaged graph through
    monkeypatch.setattr(image_export, "_KNOWN", {})  # and export it, rather than copy the good one
    damaged = load("onnx-int8", tmp_path / "other")
    assert damaged.precision == "onnx-int8"
    bad = measure_accuracy(reference, damaged, catalogue)
    assert bad.mean_cosine < MIN_MEAN_COSINE and not bad.passes


def test_a_resnet_tower_exports_and_lowers_to_int8(tmp_path: Path) -> None:
    from retrieval.image_onnx import verified_entry

    exact = load_encoder("mmsearch-small", precision="fp32", threads=1).encode_images(IMAGES)
    onnx = load_encoder("mmsearch-small", precision="onnx-int8", cache_root=tmp_path, threads=1)
    assert onnx.precision == "onnx-int8"
    assert verified_entry(image_export_dir(tmp_path, onnx.fingerprint), "fp32")["mean_cosine"] >= 0.9999
    assert float(np.mean(_cosines(onnx.encode_images(IMAGES), exact))) >= 0.995
    # torch's int8 leaves the attention pool (whose weights it reads directly) in fp32
    torch_int8 = load_encoder("mmsearch-small", precision="int8", threads=1)
    assert float(np.mean(_cosines(torch_int8.encode_images(IMAGES), exact))) >= 0.995


def test_the_image_export_goes_with_the_last_index_of_its_model(image_folder: Path, tmp_path: Path) -> None:
    from retrieval.api import delete_index, open_or_create_index

    root = tmp_path / "root"
    for name in ("a", "b"):
        with open_or_create_index(name, model=TINY_MODEL, root=root, precision="onnx-int8", threads=1) as idx:
            idx.add_folder(image_folder)
            directory = image_export_dir(root, idx.encoder.fingerprint)
    delete_index("a", root=root)
    assert (directory / RECORD_FILE).is_file()  # "b" still uses the model
    delete_index("b", root=root)
    assert not directory.exists()


def test_onnx_precisions_run_on_the_cpu_only() -> None:
    from retrieval.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="CPU only"):
        load_encoder(TINY_MODEL, device="meta", precision="onnx-int8")
