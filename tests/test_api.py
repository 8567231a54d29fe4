"""The Python API used directly, with a tiny seeded model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval
from retrieval.errors import (
    ImageDecodeError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidQueryError,
    ModelMismatchError,
    SchemaVersionError,
)

from .conftest import make_image


def test_create_add_search_reopen(image_folder: Path, tiny_encoder, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with retrieval.create_index("photos", root=root, encoder=tiny_encoder) as idx:
        report = idx.add_folder(image_folder)
        assert (report.added, report.failed, report.encoded) == (12, 0, 12)
        assert len(idx) == 12
        text_hits = idx.search_text("a blue circle", k=4)
        assert [h.rank for h in text_hits] == [1, 2, 3, 4]
        assert all(isinstance(h, retrieval.Hit) and Path(h.path).is_file() for h in text_hits)
    with retrieval.open_index("photos", root=root, encoder=tiny_encoder) as again:
        assert [h.id for h in again.search_text("a blue circle", k=4)] == [h.id for h in text_hits]
        info = again.info()
        assert (info.name, info.model, info.images, info.dim) == ("photos", "mmsearch-tiny", 12, 32)
    assert [i.name for i in retrieval.list_indexes(root)] == ["photos"]


def test_every_image_finds_itself_first(image_folder: Path, tiny_encoder) -> None:
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(image_folder)
    files = sorted(p for p in image_folder.rglob("*") if p.is_file())
    assert len(files) == 12
    for path in files:
        best = idx.search_image(path, k=3)[0]
        assert best.path == str(path.resolve())
        assert best.score == pytest.approx(1.0, abs=1e-4)
    # A PIL image and a raw vector work too.
    pil_hit = idx.search_image(Image.open(files[0]), k=1)[0]
    assert pil_hit.path == str(files[0].resolve())
    vec = tiny_encoder.encode_images([make_image(3)])[0]
    assert idx.search_vector(vec, k=1)[0].path.endswith("img03.jpg")


def _asymmetric(size=(160, 96)) -> Image.Image:
    img = make_image(7, size)
    img.paste((255, 0, 0), (0, 0, size[0] // 3, size[1]))  # a red band on the left only
    return img


def test_exif_orientation_is_applied_before_embedding(tmp_path: Path, tiny_encoder) -> None:
    upright = _asymmetric()
    folder = tmp_path / "exif"
    folder.mkdir()
    upright.save(folder / "upright.jpg", quality=95)
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the pixels
    # turned the other way, so a viewer that honours the tag shows ``upright``.
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "tagged.jpg", quality=95, exif=exif)
    # And a third file: the same stored pixels WITHOUT the tag (what a naive loader sees).
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", quality=95)

    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(folder)
    rows = {Path(h.path).name: h for h in idx.search_image(folder / "upright.jpg", k=3)}
    vec = {name: idx.store.vector(rows[name].id) for name in rows}
    cos_tagged = float(vec["upright.jpg"] @ vec["tagged.jpg"])
    cos_sideways = float(vec["upright.jpg"] @ vec["sideways.jpg"])
    assert cos_tagged > 0.99
    assert cos_tagged > cos_sideways  # the tag made a difference, and the right one
    info = idx.store.item_by_key(str((folder / "tagged.jpg").resolve()))
    assert (info.width, info.height) == upright.size  # dimensions after orientation


def test_api_errors(image_folder: Path, tiny_encoder, tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        retrieval.open_index("missing")
    idx = retrieval.create_index(encoder=tiny_encoder)
    with pytest.raises(IndexExistsError):
        retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(image_folder)
    with pytest.raises(InvalidQueryError):
        idx.search_text("  ")
    with pytest.raises(InvalidQueryError):
        idx.search_vector(np.zeros(32, dtype=np.float32))
    with pytest.raises(InvalidQueryError):
        idx.search_vector(np.ones(7, dtype=np.float32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError):
        idx.search_image(bad)
    with pytest.raises(ModelMismatchError):
        retrieval.open_or_create_index(model="mmsearch-small")


def test_other_weights_under_the_same_name_are_refused(image_folder: Path, tiny_encoder) -> None:
    import torch

    from retrieval.encoder import load_encoder

    retrieval.create_index(encoder=tiny_encoder).add_folder(image_folder)
    other = load_encoder("mmsearch-tiny")
    with torch.no_grad():
        other.model.logit_scale.add_(1.0)  # any change to the weights changes the fingerprint
    other._fingerprint = None
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        retrieval.open_index(encoder=other)


def test_newer_schema_is_refused(image_folder: Path, tiny_encoder) -> None:
    import json

    idx = retrieval.create_index(encoder=tiny_encoder)
    manifest = idx.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 999
    manifest.write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError, match="newer"):
        retrieval.open_index()


def test_stale_faiss_file_is_rebuilt_from_stored_vectors(image_folder: Path, tiny_encoder) -> None:
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(image_folder)
    expected = [h.id for h in idx.search_text("green", k=12)]
    (idx.path / "index.faiss").unlink()  # as if a crash happened before the file was written
    again = retrieval.open_index(encoder=tiny_encoder)
    assert [h.id for h in again.search_text("green", k=12)] == expected


def test_separate_folders_share_one_index(image_folder: Path, tiny_encoder, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_image(50).save(other / "x.png")
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(image_folder)
    report = idx.add_folder(other)  # must not remove the first folder's items
    assert (report.added, report.removed) == (1, 0)
    assert len(idx) == 13


def test_read_failures_are_retried_but_undecodable_files_are_not(image_folder: Path, tiny_encoder, monkeypatch) -> None:
    """A file that could not be *read* (a timeout, a permission) is tried again by the next run even
    when unchanged; a file that could not be *decoded* waits until it changes."""
    import retrieval
    from retrieval import embed

    (image_folder / "notes.jpg").write_text("not a picture")
    flaky = str(image_folder / "img02.webp")
    real_read = embed.read_file

    def timing_out(entry):
        if str(entry.path) == flaky:
            return None, "cannot read file: Connection timed out"
        return real_read(entry)

    with retrieval.create_index("r", model=tiny_encoder.spec, encoder=tiny_encoder) as idx:
        with monkeypatch.context() as m:
            m.setattr(embed, "read_file", timing_out)
            first = idx.add_folder(image_folder)
        assert first.failed == 2 and {p for p, _ in idx.failed()} >= {flaky, str(image_folder / "notes.jpg")}
        second = idx.add_folder(image_folder)
        assert second.encoded == 1 and second.failed == 1  # the flaky file, and only it, was tried again
        assert flaky not in {p for p, _ in idx.failed()}
        assert idx.add_folder(image_folder).encoded == 0
