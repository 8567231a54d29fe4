"""Tests for retrieval.sources: walking folders for image files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.errors import SourceError
from retrieval.sources import AMBIGUOUS_NAME, DEFAULT_EXCLUDES, FileEntry, Skipped, iter_files


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def walk(roots, **kwargs) -> tuple[list[str], list[Skipped]]:
    """Paths yielded relative to the first root (posix), and what was skipped."""
    skipped: list[Skipped] = []
    base = Path(roots[0]).absolute()
    found = [
        e.path.relative_to(base).as_posix() if e.path.is_relative_to(base) else str(e.path)
        for e in iter_files(roots, on_skip=skipped.append, **kwargs)
    ]
    return found, skipped


def test_recursive_sorted_depth_first(tmp_path: Path) -> None:
    for rel in ["b.jpg", "a.png", "sub/z.jpg", "sub/deeper/m.webp", "c/x.gif", "notes.txt", "sub/readme.md"]:
        touch(tmp_path / rel)
    found, skipped = walk([tmp_path])
    assert found == ["a.png", "b.jpg", "c/x.gif", "sub/deeper/m.webp", "sub/z.jpg"]
    assert skipped == []  # other extensions are ignored silently


def test_entries_are_absolute_with_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = touch(tmp_path / "d" / "one.jpg", b"12345")
    monkeypatch.chdir(tmp_path)
    (entry,) = list(iter_files(["d"]))
    assert isinstance(entry, FileEntry)
    assert entry.path == f and entry.path.is_absolute()
    assert entry.size == 5
    assert entry.mtime_ns == f.stat().st_mtime_ns


def test_extensions_case_insensitive(tmp_path: Path) -> None:
    for name in ["A.JPG", "b.Jpeg", "c.PnG", "d.heic", "e.bin"]:
        touch(tmp_path / name)
    found, _ = walk([tmp_path])
    assert found == ["A.JPG", "b.Jpeg", "c.PnG", "d.heic"]
    found, _ = walk([tmp_path], extensions={"png", ".JPG"})
    assert found == ["A.JPG", "c.PnG"]


def test_excludes(tmp_path: Path) -> None:
    for rel in ["keep.jpg", "drop.png", "raw/a.jpg", "raw/sub/b.jpg", "x/thumbs/t.jpg", "thumbs/t2.jpg", "x/y.jpg"]:
        touch(tmp_path / rel)
    assert walk([tmp_path], exclude=["*.png"])[0] == [
        "keep.jpg", "raw/a.jpg", "raw/sub/b.jpg", "thumbs/t2.jpg", "x/thumbs/t.jpg", "x/y.jpg",
    ]
    assert walk([tmp_path], exclude=["raw/*"])[0] == ["drop.png", "keep.jpg", "thumbs/t2.jpg", "x/thumbs/t.jpg", "x/y.jpg"]
    assert walk([tmp_path], exclude=["**/thumbs/**"])[0] == ["drop.png", "keep.jpg", "raw/a.jpg", "raw/sub/b.jpg", "x/y.jpg"]
    assert walk([tmp_path], exclude=["*.PNG", "RAW"])[0] == ["keep.jpg", "thumbs/t2.jpg", "x/thumbs/t.jpg", "x/y.jpg"]


def test_excluded_directory_is_not_descended(tmp_path: Path) -> None:
    touch(tmp_path / "ok.jpg")
    locked = tmp_path / "skipme"
    touch(locked / "inner.jpg")
    listed: list[str] = []
    real_scandir = os.scandir

    def spy(path):
        listed.append(os.fspath(path))
        return real_scandir(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "scandir", spy)
        found, _ = walk([tmp_path], exclude=["skipme"])
    assert found == ["ok.jpg"]
    assert str(locked) not in listed


def test_hidden_and_default_excludes(tmp_path: Path) -> None:
    for rel in ["a.jpg", ".hidden.jpg", ".cache/c.jpg", "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg", "__MACOSX/._a.jpg", "._b.jpg"]:
        touch(tmp_path / rel)
    assert "@eaDir" in DEFAULT_EXCLUDES and ".*" in DEFAULT_EXCLUDES
    assert walk([tmp_path])[0] == ["a.jpg"]
    assert walk([tmp_path], include_hidden=True)[0] == [".cache/c.jpg", ".hidden.jpg", "a.jpg"]


def test_hidden_root_is_walked(tmp_path: Path) -> None:
    touch(tmp_path / ".photos" / "a.jpg")
    assert walk([tmp_path / ".photos"])[0] == ["a.jpg"]


def test_symlink_loop_terminates_and_is_reported(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "back")  # a/back -> root: a cycle
    os.symlink("self", tmp_path / "self")  # a link to itself (ELOOP)
    found, skipped = walk([tmp_path])
    assert found == ["a/x.jpg"]
    loops = [s for s in skipped if "symlink loop" in s.reason]
    assert [s.path for s in loops] == [str(tmp_path / "a" / "back"), str(tmp_path / "self")]


def test_symlinked_directory_is_followed_once(tmp_path: Path) -> None:
    touch(tmp_path / "photos" / "p.jpg")
    other = tmp_path / "elsewhere"
    touch(other / "e.jpg")
    os.symlink(other, tmp_path / "photos" / "link")
    found, skipped = walk([tmp_path / "photos"])
    assert found == ["link/e.jpg", "p.jpg"]
    assert skipped == []
    # Walking the parent meets `elsewhere` twice (directly and via the link): once is enough, and
    # not a failure to report (the file is indexed, under its first path).
    found, skipped = walk([tmp_path])
    assert found == ["elsewhere/e.jpg", "photos/p.jpg"]
    assert skipped == []
    # The same folder given twice is walked once, silently ('index DIR DIR' reported "1 failed").
    found, skipped = walk([tmp_path / "photos", tmp_path / "photos"])
    assert found == ["link/e.jpg", "p.jpg"] and skipped == []


def test_broken_symlink_reported(tmp_path: Path) -> None:
    touch(tmp_path / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "gone.txt", tmp_path / "dangling.txt")  # not an image: ignored
    found, skipped = walk([tmp_path])
    assert found == ["ok.jpg"]
    assert skipped == [Skipped(str(tmp_path / "dangling.jpg"), "broken symlink")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any directory")
def test_unreadable_directory_reported(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    locked = tmp_path / "locked"
    touch(locked / "secret.jpg")
    touch(tmp_path / "z" / "after.jpg")
    locked.chmod(0)
    try:
        found, skipped = walk([tmp_path])
    finally:
        locked.chmod(0o755)
    assert found == ["a.jpg", "z/after.jpg"]
    assert len(skipped) == 1 and skipped[0].path == str(locked) and "permission denied" in skipped[0].reason


def test_unlistable_directory_reported_via_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same as above but also runs as root: make scandir fail for one folder.
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "locked" / "secret.jpg")
    real_scandir = os.scandir

    def fake(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake)
    found, skipped = walk([tmp_path])
    assert found == ["a.jpg"]
    assert skipped == [Skipped(str(tmp_path / "locked"), "permission denied (cannot list folder)")]


def test_non_utf8_filename_is_walked_with_its_real_bytes(tmp_path: Path) -> None:
    touch(tmp_path / "good.jpg")
    bad = os.path.join(bytes(tmp_path), b"bad\xff.jpg")
    try:
        with open(bad, "wb") as f:
            f.write(b"x")
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    found, skipped = walk([tmp_path])
    assert skipped == []
    assert sorted(found) == sorted(["good.jpg", os.fsdecode(b"bad\xff.jpg")])
    entries = list(iter_files([tmp_path]))
    assert os.fsencode(str(next(e.path for e in entries if "bad" in str(e.path)))) == bad  # the real bytes


def test_a_name_that_could_not_round_trip_is_a_reported_skip(tmp_path: Path) -> None:
    touch(tmp_path / "good.jpg")
    touch(tmp_path / "odd\U000f0080.jpg")  # valid UTF-8, but the private-use stand-in of byte 0x80
    found, skipped = walk([tmp_path])
    assert found == ["good.jpg"]
    assert [s.reason for s in skipped] == [AMBIGUOUS_NAME]


def test_fifo_with_image_name_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    found, skipped = walk([tmp_path])
    assert found == []
    assert skipped == [Skipped(str(tmp_path / "pipe.jpg"), "not a regular file")]


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory: .*nope"):
        iter_files([tmp_path / "nope"])  # raised at the call, before iteration
    with pytest.raises(SourceError):
        list(iter_files([tmp_path, tmp_path / "nope"]))


def test_single_file_roots(tmp_path: Path) -> None:
    img = touch(tmp_path / "one.JPG")
    txt = touch(tmp_path / "notes.txt")
    skipped: list[Skipped] = []
    entries = list(iter_files([img, txt], on_skip=skipped.append))
    assert [e.path for e in entries] == [img]
    assert skipped == [Skipped(str(txt), "not an image file extension")]


def test_streams_lazily(tmp_path: Path) -> None:
    for i in range(5):
        touch(tmp_path / f"d{i}" / "x.jpg")
    it = iter_files([tmp_path])
    first = next(it)
    assert first.path == tmp_path / "d0" / "x.jpg"
    # Files created after the walk started, in folders not yet listed, are seen.
    touch(tmp_path / "d4" / "late.jpg")
    rest = [e.path.name for e in it]
    assert rest == ["x.jpg", "x.jpg", "x.jpg", "late.jpg", "x.jpg"]
