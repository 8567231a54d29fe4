"""retrieval.originals: an indexed file is opened only while it is still the file that was indexed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from retrieval import originals
from retrieval.embed import content_hash
from retrieval.errors import ItemNotFoundError
from retrieval.originals import ExpectedFile, FileIdentity, VerifiedFiles, identity_of, open_indexed_file


def row_for(path: Path, item_id: int = 7, **identity) -> SimpleNamespace:
    """A store row as the indexer writes it (plus identity fields, once the store records them)."""
    st = path.stat()
    return SimpleNamespace(id=item_id, path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                           hash=content_hash(path.read_bytes()), **identity)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # more than one read chunk
    return path


def test_the_streamed_hash_is_the_indexers(photo: Path) -> None:
    fd = os.open(photo, os.O_RDONLY)
    try:
        assert originals._content_hash(fd) == content_hash(photo.read_bytes())
    finally:
        os.close(fd)


def test_an_unchanged_file_is_hashed_once(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = originals._content_hash
    monkeypatch.setattr(originals, "_content_hash", lambda fd: hashed.append(fd) or real(fd))
    verified = VerifiedFiles()
    expected = ExpectedFile.of(row_for(photo))
    for _ in range(3):
        with open_indexed_file(expected, verified) as fh:
            assert fh.read() == photo.read_bytes()
    assert len(hashed) == 1
    # Rewritten in place with the same size and time: the change time moved, so it is checked again.
    data = photo.read_bytes()
    stat = photo.stat()
    photo.write_bytes(b"x" * len(data))
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ItemNotFoundError, match="not the file that was indexed"):
        open_indexed_file(expected, verified)
    assert len(hashed) == 2


def test_a_recorded_identity_pins_the_real_path_and_spares_the_hash(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed: list[int] = []
    real = originals._content_hash
    monkeypatch.setattr(originals, "_content_hash", lambda fd: hashed.append(fd) or real(fd))
    link = tmp_path / "link.jpg"
    os.symlink(photo, link)
    identity = identity_of(link)
    assert identity == FileIdentity(str(photo.resolve()), photo.stat().st_dev, photo.stat().st_ino)
    row = row_for(link, real_path=identity.real_path, dev=identity.device, inode=identity.inode)
    expected = ExpectedFile.of(row)
    assert expected.identity == identity
    link.unlink()  # the link itself may go: the recorded real path is what is opened
    with open_indexed_file(expected) as fh:
        assert fh.read(4) == photo.read_bytes()[:4]
    assert hashed == []  # the same inode, size and time: no need to read the whole file
    # An identical copy in its place (a restored backup: another inode) is served once its content matches.
    stat = photo.stat()
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(photo, copy)
    os.replace(copy, photo)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with open_indexed_file(expected) as fh:
        assert fh.read() == copy.parent.joinpath("photo.jpg").read_bytes()
    assert len(hashed) == 1
    # Another file forged to the same size and time is not.
    photo.write_bytes(b"\0" * stat.st_size)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ItemNotFoundError, match="not the file that was indexed"):
        open_indexed_file(expected)
    # A symlink at the recorded real path is never followed.
    photo.unlink()
    os.symlink(tmp_path / "elsewhere", photo)
    with pytest.raises(ItemNotFoundError, match="symbolic link"):
        open_indexed_file(expected)


def test_paths_that_are_not_local_files_are_refused(tmp_path: Path) -> None:
    for path, words in (("s3://bucket/photo.jpg", "not a local file"), ("relative/photo.jpg", "not a local file"),
                        (str(tmp_path), "not a regular file")):
        expected = ExpectedFile(item_id=3, path=path, size=None, mtime_ns=None, hash="0" * 32)
        with pytest.raises(ItemNotFoundError, match=words) as caught:
            open_indexed_file(expected)
        assert "item 3" in str(caught.value)


def test_the_content_check_can_be_left_to_whoever_made_something_earlier(photo: Path, tmp_path: Path) -> None:
    expected = ExpectedFile.of(row_for(photo))
    stat = photo.stat()
    forged = tmp_path / "forged.jpg"
    forged.write_bytes(b"\0" * stat.st_size)
    os.utime(forged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    photo.unlink()
    os.link(forged, photo)
    with open_indexed_file(expected, check_content=False) as fh:  # size, time, type: as recorded
        assert fh.read(1) == b"\0"
    with pytest.raises(ItemNotFoundError, match="not the file that was indexed"):
        open_indexed_file(expected)


def test_without_a_recorded_identity_the_content_decides(photo: Path, tmp_path: Path) -> None:
    expected = ExpectedFile.of(row_for(photo))  # a row of a store that did not record dev/inode
    assert expected.identity is None
    stat = photo.stat()
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0:" + b"s" * (stat.st_size - 11))
    os.utime(secret, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    photo.unlink()
    os.symlink(secret, photo)  # followed (the link may have been there at index time), then judged by content
    with pytest.raises(ItemNotFoundError, match="not the file that was indexed"):
        open_indexed_file(expected)
