"""Searching photos by when, where and with what they were taken, end to end (issue 19).

A small library of generated photos with written EXIF (capture times with and
without UTC offsets, GPS positions of cities on five continents, camera
names, one HEIC and one photo with no metadata at all) is indexed through
``mmsearch index``; what ``info`` says, what the filters return through the
CLI and the Python API, the order of ``--sort taken``, content twins, and the
back-fill of an index made before metadata was stored (schema 1) are checked
against what was written. The shared sample photos are checked too when present.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.errors import InvalidQueryError
from retrieval.search import Filters
from retrieval.store_schema import SCHEMA1_COLUMNS

from .conftest import TINY_MODEL, make_image, one_line_error
from .test_photo_meta import make_exif, sample_root

runner = CliRunner()

# name -> (format, DateTimeOriginal, OffsetTimeOriginal, (lat, lon), make, model)
LIBRARY: dict[str, tuple[str, str | None, str | None, tuple[float, float] | None, str | None, str | None]] = {
    "sevilla.jpg": ("JPEG", "2023:07:14 18:30:00", "+02:00", (37.3891, -5.9845), "Apple", "iPhone 13"),
    "madrid.jpg": ("JPEG", "2023:08:31 23:30:00", "+02:00", (40.4168, -3.7038), "Apple", "iPhone 13"),
    # 00:30 on 1 September on the photo's clock, though still 31 August in UTC:
    "barcelona.jpg": ("JPEG", "2023:09:01 00:30:00", "+02:00", (41.3874, 2.1686), "Apple", "iPhone 13"),
    "tokyo.jpg": ("JPEG", "2023:04:02 09:15:00", None, (35.6762, 139.6503), "SONY", "ILCE-7M3"),
    "sydney.heic": ("HEIF", "2022:12:31 23:59:00", "+11:00", (-33.8688, 151.2093), "samsung", "SM-S906U"),
    "berlin.jpg": ("JPEG", "2023:08:20 12:00:00", "+02:00", (52.5200, 13.4050), "Apple", "iPhone 12 Pro"),
    "potsdam.png": ("PNG", "2021:05:01 10:00:00", None, (52.3906, 13.0645), "Canon", "Canon EOS R5"),
    "rio.jpg": ("JPEG", "2019:02:03 15:00:00", "-03:00", (-22.9068, -43.1729), "Google", "Pixel 7"),
    "nairobi.webp": ("WEBP", "2020:01:10 08:00:00", None, (-1.2864, 36.8172), "NIKON CORPORATION", "NIKON D750"),
    "scan.jpg": ("JPEG", None, None, None, None, None),  # no metadata: dated by its file time
}
SCAN_MTIME = datetime(2015, 6, 15, 12, 0).timestamp()  # local time, as a file manager shows it
SPAIN = {"sevilla.jpg", "madrid.jpg", "barcelona.jpg"}
WITH_GPS = set(LIBRARY) - {"scan.jpg"}


def write_library(folder: Path) -> Path:
    pytest.importorskip("pillow_heif")
    from retrieval.loading import register_format_plugins

    register_format_plugins()
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, (fmt, original, offset, gps, make, model)) in enumerate(LIBRARY.items()):
        exif = make_exif(make=make, model=model, original=original, offset=offset, gps=gps)
        img = make_image(100 + seed, size=(64 + seed, 48))
        kwargs = {"exif": exif.tobytes()} if original or gps or make else {}
        img.save(folder / name, fmt, **kwargs)
    os.utime(folder / "scan.jpg", (SCAN_MTIME, SCAN_MTIME))
    return folder


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(photo folder, index root) with the library indexed once through the CLI."""
    base = tmp_path_factory.mktemp("photo-search")
    photos = write_library(base / "photos")
    root = base / "indexes"
    result = run("index", str(photos), "--model", TINY_MODEL, "--index-dir", str(root), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == len(LIBRARY)
    return photos, root


def names(library: tuple[Path, Path], *args: str) -> set[str]:
    """The file names a query returns with these options (all of them: k is larger than the library)."""
    result = run("query", "a photo", "-k", "50", "--json", "--index-dir", str(library[1]), *args)
    assert result.exit_code == 0, result.output
    return {Path(h["path"]).name for h in json.loads(result.stdout)}


def test_info_counts_dates_places_and_cameras(library) -> None:
    result = run("info", "--json", "--index-dir", str(library[1]))
    assert result.exit_code == 0, result.output
    photos = json.loads(result.stdout)["photos"]
    assert photos["images"] == len(LIBRARY)
    assert photos["with_capture_time"] == len(LIBRARY) - 1 and photos["file_time_only"] == 1
    assert (photos["first_taken"], photos["last_taken"]) == ("2019-02-03", "2023-09-01")
    assert photos["with_gps"] == photos["with_place"] == len(WITH_GPS) and photos["not_read"] == 0
    assert photos["cameras"] == {"Apple iPhone 13": 3, "Apple iPhone 12 Pro": 1, "Canon EOS R5": 1,
                                 "Google Pixel 7": 1, "Nikon D750": 1, "Samsung SM-S906U": 1, "Sony ILCE-7M3": 1}
    assert photos["countries"] == {"Spain": 3, "Germany": 2, "Australia": 1, "Brazil": 1, "Japan": 1, "Kenya": 1}
    text = run("info", "--index-dir", str(library[1])).stdout
    assert "9 of 10 with a capture date (2019-02-03 to 2023-09-01)" in text
    assert "Apple iPhone 13 3" in text and "Spain 3" in text


def test_each_result_carries_its_capture_time_camera_and_place(library) -> None:
    result = run("query", "a photo", "-k", "50", "--json", "--index-dir", str(library[1]))
    photos = {Path(h["path"]).name: h["photo"] for h in json.loads(result.stdout)}
    assert photos["sevilla.jpg"]["taken_at"] == "2023-07-14T18:30:00+02:00"
    assert photos["sevilla.jpg"]["time_source"] == "exif-original"
    assert photos["sevilla.jpg"]["place"] == "Sevilla, Andalusia, Spain"
    assert photos["sevilla.jpg"]["camera"] == "Apple iPhone 13"
    assert photos["tokyo.jpg"]["taken_at"] == "2023-04-02T09:15:00" and "utc_offset_min" not in photos["tokyo.jpg"]
    assert photos["sydney.heic"]["taken_at"] == "2022-12-31T23:59:00+11:00"
    assert photos["sydney.heic"]["place"] == "Sydney, New South Wales, Australia"
    assert photos["nairobi.webp"]["camera"] == "Nikon D750" and photos["nairobi.webp"]["place_cc"] == "KE"
    assert photos["rio.jpg"]["gps_lat"] == pytest.approx(-22.9068, abs=1e-6)
    scan = photos["scan.jpg"]
    assert scan["time_source"] == "file-mtime" and scan["taken_ts"] == pytest.approx(SCAN_MTIME)
    assert "camera" not in scan and "place" not in scan


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # The example: summer 2023 in Spain; barcelona.jpg is 1 September on its own clock.
        (("--taken-after", "2023-06-01", "--taken-before", "2023-09-01", "--place", "Spain"), {"sevilla.jpg", "madrid.jpg"}),
        (("--taken-after", "2023-09"), {"barcelona.jpg"}),
        (("--taken-before", "2020"), {"rio.jpg", "scan.jpg"}),  # the scan by its file date, 2015
        (("--taken-after", "2015-06-15", "--taken-before", "2015-06-16"), {"scan.jpg"}),
        (("--place", "España"), SPAIN),
        (("--place", "germany"), {"berlin.jpg", "potsdam.png"}),
        (("--place", "Brandenburg"), {"potsdam.png"}),
        (("--place", "Tokyo", "--camera", "sony"), {"tokyo.jpg"}),
        (("--place", "Kenya"), {"nairobi.webp"}),
        (("--near", "Berlin"), {"berlin.jpg"}),  # Potsdam is 27 km away: outside the default 25 km
        (("--near", "Berlin", "--within", "40"), {"berlin.jpg", "potsdam.png"}),
        (("--near", "-33.87,151.21", "--within", "5"), {"sydney.heic"}),
        (("--camera", "iPhone"), {"sevilla.jpg", "madrid.jpg", "barcelona.jpg", "berlin.jpg"}),
        (("--camera", "iphone 12"), {"berlin.jpg"}),
        (("--camera", "nikon d750"), {"nairobi.webp"}),
        (("--has-gps",), WITH_GPS),
        (("--no-gps",), {"scan.jpg"}),
        # With the filters that were there before: file types, folders.
        (("--place", "Spain", "--type", "png"), set()),
        (("--camera", "canon", "--type", "png"), {"potsdam.png"}),
    ],
)
def test_filters_are_exact_through_the_cli(library, options, expected) -> None:
    assert names(library, *options) == expected


def test_k_counts_results_after_the_photo_filters(library) -> None:
    result = run("query", "a photo", "-k", "2", "--place", "Spain", "--json", "--index-dir", str(library[1]))
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and {Path(h["path"]).name for h in hits} <= SPAIN


def test_sort_taken_orders_the_best_matches_newest_first(library) -> None:
    root = str(library[1])
    by_score = json.loads(run("query", "a photo", "-k", "4", "--json", "--index-dir", root).stdout)
    by_time = json.loads(run("query", "a photo", "-k", "4", "--sort", "taken", "--json", "--index-dir", root).stdout)
    assert {h["path"] for h in by_time} == {h["path"] for h in by_score}  # the same k best matches
    times = [h["photo"]["taken_ts"] for h in by_time]
    assert times == sorted(times, reverse=True) and [h["rank"] for h in by_time] == [1, 2, 3, 4]
    everything = json.loads(run("query", "a photo", "-k", "50", "--sort", "taken", "--json", "--index-dir", root).stdout)
    assert [Path(h["path"]).name for h in everything][:3] == ["barcelona.jpg", "madrid.jpg", "berlin.jpg"]
    assert Path(everything[-1]["path"]).name == "scan.jpg"  # 2015, by its file time
    table = run("query", "a photo", "-k", "50", "--sort", "taken", "--index-dir", root).stdout
    assert "2023-09-01 00:30" in table and "Sevilla, Andalusia, Spain" in table and "~2015-06-15" in table


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (("--place", "Qwxzzyland"), ("Qwxzzyland",)),
        (("--taken-after", "2023-02-30"), ("2023-02-30",)),
        (("--taken-before", "last summer"), ("last summer",)),
        (("--taken-after", "2023-09-01", "--taken-before", "2023-06-01"), ("2023-09-01", "2023-06-01")),
        (("--near", "Spain"), ("Spain", "not a city")),
        (("--near", "Qwxzzyland"), ("Qwxzzyland",)),
        (("--near", "Berlin", "--within", "-3"), ("-3",)),
        (("--within", "10"), ("--near",)),
        (("--camera", "  "), ("camera",)),
        (("--sort", "size"), ("size",)),
    ],
)
def test_bad_photo_filters_are_one_line_errors_naming_the_value(library, options, words) -> None:
    one_line_error(run("query", "a photo", "--index-dir", str(library[1]), *options), *words)


def test_filters_through_the_python_api(library) -> None:
    photos, root = library
    with retrieval.open_index(root=root) as idx:
        def found(**conditions: object) -> set[str]:
            return {Path(h.path).name for h in idx.search_text("a photo", k=50, filters=Filters(**conditions))}

        assert found(taken_after="2023-06-01", taken_before="2023-09-01", place="Spain") == {"sevilla.jpg", "madrid.jpg"}
        assert found(taken_after=datetime(2023, 9, 1)) == {"barcelona.jpg"}
        assert found(near="Berlin", within_km=40) == {"berlin.jpg", "potsdam.png"}
        assert found(camera="iphone", has_gps=True, path_prefix=str(photos)) == SPAIN | {"berlin.jpg"}
        assert found(has_gps=False) == {"scan.jpg"}
        parsed = Filters.parse(near="Berlin", within="40km", has_gps="true", taken_before="2023-09")
        assert {Path(h.path).name for h in idx.search_text("a photo", k=50, filters=parsed)} == {"berlin.jpg", "potsdam.png"}
        with pytest.raises(InvalidQueryError, match="maybe"):
            Filters.parse(has_gps="maybe")
        with pytest.raises(InvalidQueryError, match="Qwxzzyland"):
            Filters(place="Qwxzzyland")
        newest = idx.search_text("a photo", k=50, sort="taken")
        assert Path(newest[0].path).name == "barcelona.jpg"
        with pytest.raises(InvalidQueryError, match="sort"):
            idx.search_text("a photo", sort="random")
        item = idx.item(idx.find_item(photos / "rio.jpg"))
        assert (item.place_country, item.camera_make, item.utc_offset_min) == ("Brazil", "Google", -180)


def test_photo_filters_never_return_texts(library, tmp_path: Path) -> None:
    photos, root = library
    target = tmp_path / "root"
    shutil.copytree(root, target)
    texts = tmp_path / "captions.txt"
    texts.write_text("a beach in Spain\na street in Berlin\n")
    assert run("index", "--texts", str(texts), "--index-dir", str(target), "-q").exit_code == 0
    hits = json.loads(run("query", "Spain", "-k", "50", "--target", "all", "--place", "Spain", "--json",
                          "--index-dir", str(target)).stdout)
    assert {h["kind"] for h in hits} == {"image"} and len(hits) == 3


def test_a_copy_takes_its_twins_metadata_and_its_own_file_time(library, tmp_path: Path) -> None:
    photos, root = library
    target = tmp_path / "root"
    shutil.copytree(root, target)
    extra = photos.parent / "copies"
    extra.mkdir(exist_ok=True)
    shutil.copyfile(photos / "sevilla.jpg", extra / "sevilla-copy.jpg")
    shutil.copyfile(photos / "scan.jpg", extra / "scan-copy.jpg")
    later = SCAN_MTIME + 86400 * 400
    os.utime(extra / "scan-copy.jpg", (later, later))
    try:
        report = json.loads(run("index", str(extra), "--index-dir", str(target), "--json").stdout)
        assert report["reused"] == 2 and report["encoded"] == 0
        with retrieval.open_index(root=target) as idx:
            copy = idx.item(idx.find_item(extra / "sevilla-copy.jpg"))
            twin = idx.item(idx.find_item(photos / "sevilla.jpg"))
            columns = ("taken_at", "taken_ts", "camera_model", "gps_lat", "place_city", "place_cc", "meta_version")
            assert [getattr(copy, c) for c in columns] == [getattr(twin, c) for c in columns]
            scan_copy = idx.item(idx.find_item(extra / "scan-copy.jpg"))
            assert scan_copy.time_source == "file-mtime" and scan_copy.taken_ts == pytest.approx(later)
    finally:
        shutil.rmtree(extra)


# -- an index made before metadata was stored ------------------------------------------------


SCHEMA1_ITEMS = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    key TEXT NOT NULL UNIQUE, path TEXT, text TEXT, size INTEGER, mtime_ns INTEGER, hash TEXT,
    width INTEGER, height INTEGER, status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), error TEXT,
    meta TEXT, indexed_at REAL NOT NULL
)"""


def make_schema1_index(source_root: Path, target_root: Path) -> Path:
    """A copy of an index as the previous mmsearch wrote it: schema 1, no metadata columns, no model rows."""
    shutil.copytree(source_root, target_root)
    folder = target_root / "default"
    (folder / "index.faiss").unlink(missing_ok=True)
    old = sqlite3.connect(folder / "items.sqlite")
    rows = old.execute(f"SELECT {', '.join(SCHEMA1_COLUMNS)} FROM items").fetchall()
    vectors = old.execute("SELECT id, vec FROM vectors").fetchall()
    generation = old.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
    old.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(folder / "items.sqlite") + suffix).unlink(missing_ok=True)
    db = sqlite3.connect(folder / "items.sqlite")
    db.executescript(SCHEMA1_ITEMS + """;
        CREATE INDEX items_hash ON items(hash);
        CREATE TABLE vectors (id INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE, vec BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    db.executemany(f"INSERT INTO items ({', '.join(SCHEMA1_COLUMNS)}) VALUES ({', '.join('?' * len(SCHEMA1_COLUMNS))})",
                   rows)
    db.executemany("INSERT INTO vectors (id, vec) VALUES (?, ?)", vectors)
    db.execute("INSERT INTO meta (key, value) VALUES ('generation', ?)", generation)
    db.commit()
    db.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 1
    manifest["ann"]["generation"] = -1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_an_index_from_before_metadata_keeps_every_vector_and_is_back_filled_without_encoding(
    library, tmp_path: Path
) -> None:
    photos, root = library
    folder = make_schema1_index(root, tmp_path / "old")
    with sqlite3.connect(folder / "items.sqlite") as db:
        before = dict(db.execute("SELECT id, vec FROM vectors").fetchall())
        assert "taken_at" not in {r[1] for r in db.execute("PRAGMA table_info(items)")}
    info = json.loads(run("info", "--json", "--index-dir", str(tmp_path / "old")).stdout)  # migrates to schema 2
    assert info["schema_version"] == 2 and info["images"] == len(LIBRARY)
    assert info["photos"]["not_read"] == len(LIBRARY) and info["photos"]["with_capture_time"] == 0
    assert "no re-encoding" in run("info", "--index-dir", str(tmp_path / "old")).stdout
    assert names((photos, tmp_path / "old"), "--place", "Spain") == set()  # nothing known yet

    report = json.loads(run("index", str(photos), "--index-dir", str(tmp_path / "old"), "--json").stdout)
    assert report["metadata_read"] == len(LIBRARY)
    assert report["encoded"] == 0 and report["unchanged"] == len(LIBRARY) and report["added"] == 0
    with sqlite3.connect(folder / "items.sqlite") as db:
        assert dict(db.execute("SELECT id, vec FROM vectors").fetchall()) == before  # every vector, as it was
    fresh = json.loads(run("info", "--json", "--index-dir", str(root)).stdout)["photos"]
    filled = json.loads(run("info", "--json", "--index-dir", str(tmp_path / "old")).stdout)["photos"]
    assert filled == fresh  # the same as an index made with metadata from the start
    assert names((photos, tmp_path / "old"), "--place", "Spain") == SPAIN
    again = json.loads(run("index", str(photos), "--index-dir", str(tmp_path / "old"), "--json").stdout)
    assert again["metadata_read"] == 0 and again["encoded"] == 0  # read once


def test_back_fill_leaves_an_unreadable_file_for_the_next_run(
    library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieval import photo_store

    photos, root = library
    make_schema1_index(root, tmp_path / "old")
    target = str(photos / "tokyo.jpg")

    def denied(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(photo_store, "open", denied, raising=False)
    report = json.loads(run("index", str(photos), "--index-dir", str(tmp_path / "old"), "--json").stdout)
    monkeypatch.undo()
    assert report["metadata_read"] == len(LIBRARY) - 1
    with retrieval.open_index(root=tmp_path / "old") as idx:
        assert idx.item(idx.find_item(target)).meta_version is None
    report = json.loads(run("index", str(photos), "--index-dir", str(tmp_path / "old"), "--json").stdout)
    assert report["metadata_read"] == 1 and report["encoded"] == 0


def test_a_run_without_metadata_is_back_filled_by_the_next(tmp_path: Path, tiny_encoder) -> None:
    from retrieval.indexer import update_index

    photos = write_library(tmp_path / "photos")
    idx = retrieval.create_index("plain", encoder=tiny_encoder, root=tmp_path / "root")
    with idx.store.writer_lock():
        report = update_index(idx.store, tiny_encoder, [photos], read_metadata=False)
    assert report.metadata_read == 0 and idx.info().photos.not_read == len(LIBRARY)
    second = idx.add_folder(photos)
    assert second.metadata_read == len(LIBRARY) and second.encoded == 0
    assert idx.info().photos.with_place == len(WITH_GPS)
    idx.close()


# -- the shared sample photos ----------------------------------------------------------------


def test_sample_photos_dates_places_and_cameras_through_the_cli(tmp_path: Path) -> None:
    samples = sample_root()
    if not samples.is_dir():
        pytest.skip("the shared sample photos are not present")
    root = str(tmp_path / "root")
    started = time.perf_counter()
    assert run("index", str(samples), "--model", TINY_MODEL, "--index-dir", root, "-q").exit_code == 0
    assert time.perf_counter() - started < 300
    photos = json.loads(run("info", "--json", "--index-dir", root).stdout)["photos"]
    assert photos["first_taken"] == "2007-12-06"  # the Fujifilm's cyclamen
    assert photos["cameras"]["Apple iPhone 7"] == 1 and photos["cameras"]["Nikon D750"] == 1
    assert photos["cameras"]["Sony DSLR-A550"] == 3  # one photo, three files
    assert photos["countries"] == {"United States": 4}

    def found(*options: str) -> set[str]:
        result = run("query", "a photo", "-k", "50", "--json", "--index-dir", root, *options)
        assert result.exit_code == 0, result.output
        return {Path(h["path"]).name for h in json.loads(result.stdout)}

    assert found("--camera", "iphone") == {"IMG_2682.heic"}
    assert found("--place", "Nebraska") == {"IMG_2682.heic"}
    assert found("--near", "San Francisco") == {"gps-datetime.jpg"}
    assert found("--taken-after", "2007-12-06", "--taken-before", "2007-12-07") == {"cyclamen_persicum.jpg"}
    assert found("--camera", "EOS 7D", "--taken-after", "2010-08-13T21:00", "--taken-before", "2010-08-13T21:01") == {
        "denali.webp"}
