"""Opening an indexed file to serve it, only while it is still the file that was indexed.

Between indexing and serving, anyone who can write into an indexed folder can
replace a photo by a symlink (or a hard link) to any file the server may read:
``/etc/passwd``, the index's own ``items.sqlite``, a model file. Serving
"whatever is at the stored path now" would hand that file out. So a file is
served only when all of these hold, checked on the open descriptor, never on
the path (no window between the check and the read):

- it is opened without following a symlink in its last component
  (``O_NOFOLLOW``) and without blocking on a FIFO (``O_NONBLOCK``);
  an item whose path was a symlink when it was indexed (a legitimate link into
  another folder) is opened at the link's resolved target, with the same flags;
- ``fstat`` says it is a regular file of the recorded size and modification time;
- it is the very file that was indexed: when the store recorded the file's
  identity (resolved path, device and inode: :class:`FileIdentity`, what
  :func:`identity_of` returns at index time), it is opened at that path and
  is that inode; otherwise, or when the inode differs (a folder restored from
  a backup), its content hash must equal the stored one. Size and time alone
  can be forged (``touch -r``, padding a picture to a secret file's size
  before it is indexed), an inode or content cannot. (A video's content is
  its fingerprint, :func:`retrieval.video_files.video_fingerprint`: windows
  spread over the whole file.) Hashing reads the file
  once; the result is remembered per inode and change time
  (:class:`VerifiedFiles`), so repeated requests for an unchanged file cost
  one ``fstat``.

Anything else is :class:`~retrieval.errors.ItemNotFoundError` with a reason
(the server answers 404). The reasons never describe what the path points
at now.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

from .errors import ItemNotFoundError
from .video_files import video_fingerprint_fd

__all__ = ["FileIdentity", "ExpectedFile", "VerifiedFiles", "identity_of", "open_indexed_file"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileIdentity:
    """What identifies a file on disk beyond its path: to record when it is indexed.

    ``real_path`` is the path with every symlink resolved, ``device``/``inode``
    the file's ``st_dev``/``st_ino`` (so a replaced file is recognised even with
    the same size, time and path).
    """

    real_path: str
    device: int
    inode: int


def identity_of(path: str | os.PathLike[str]) -> FileIdentity:
    """The identity of the file at ``path`` now (symlinks resolved); ``OSError`` if it cannot be read."""
    real = os.path.realpath(path)
    st = os.stat(real, follow_symlinks=False)
    return FileIdentity(real_path=real, device=st.st_dev, inode=st.st_ino)


@dataclass(frozen=True)
class ExpectedFile:
    """What the store says about an indexed file: where it was, its size, time, content hash, maybe its identity."""

    item_id: int
    path: str
    size: int | None
    mtime_ns: int | None
    hash: str | None
    identity: FileIdentity | None = None
    fingerprint: bool = False  # ``hash`` is a video's fingerprint (retrieval.video_files), not a whole-file hash

    @classmethod
    def of(cls, row: Any) -> "ExpectedFile":
        """From a store row (``ItemRow``); its ``real_path``/``dev``/``inode`` when the store recorded them.

        Rows written before the store recorded a file's identity (or by a shard
        made on another machine) have none: the content hash decides then.
        """
        device, inode = getattr(row, "dev", None), getattr(row, "inode", None)
        # The store writes real_path only when it differs from the path (the path went through a symlink).
        real = getattr(row, "real_path", None) or row.path
        identity = FileIdentity(str(real), int(device), int(inode)) if device is not None and inode is not None else None
        return cls(item_id=int(row.id), path=str(row.path), size=row.size, mtime_ns=row.mtime_ns, hash=row.hash,
                   identity=identity, fingerprint=getattr(row, "kind", None) == "video")


class VerifiedFiles:
    """Remembers which (item, inode, size, times) were hashed and found right, so a file is hashed once.

    A changed file has a new change time (``st_ctime_ns`` cannot be set by a
    user), a replaced one another inode: either way it is hashed again.
    Thread-safe; holds at most ``size`` entries.
    """

    def __init__(self, size: int = 65_536) -> None:
        self._size = size
        self._seen: "OrderedDict[int, tuple[int, ...]]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(expected: ExpectedFile, st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, hash(expected.hash))

    def known(self, expected: ExpectedFile, st: os.stat_result) -> bool:
        with self._lock:
            return self._seen.get(expected.item_id) == self._key(expected, st)

    def remember(self, expected: ExpectedFile, st: os.stat_result) -> None:
        with self._lock:
            self._seen[expected.item_id] = self._key(expected, st)
            self._seen.move_to_end(expected.item_id)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


def _refuse(expected: ExpectedFile, why: str) -> ItemNotFoundError:
    return ItemNotFoundError(f"the file of item {expected.item_id} {why}: {expected.path}")


def _open_no_follow(path: str) -> int:
    return os.open(path, _OPEN_FLAGS)


def _open(expected: ExpectedFile) -> int:
    """A descriptor of the indexed file, opened without following a final symlink."""
    if not os.path.isabs(expected.path):
        raise _refuse(expected, "is not a local file")
    if expected.identity is not None:
        where = expected.identity.real_path  # recorded at index time: nothing is resolved now
    else:
        where = expected.path
    try:
        return _open_no_follow(where)
    except FileNotFoundError:
        raise _refuse(expected, "is gone") from None
    except PermissionError:
        raise _refuse(expected, "cannot be read (permission denied)") from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK) or expected.identity is not None:
            raise _refuse(expected, "cannot be opened" if exc.errno != errno.ELOOP else "is a symbolic link now") from None
    # The path is a symlink (FreeBSD says EMLINK). Open its target, still refusing a link in the
    # last component, so a swap between resolving and opening fails; the content check below
    # decides whether the target is the file that was indexed.
    try:
        return _open_no_follow(os.path.realpath(expected.path))
    except FileNotFoundError:
        raise _refuse(expected, "is gone (a broken symbolic link)") from None
    except OSError:
        raise _refuse(expected, "cannot be opened") from None


def _content_hash(fd: int) -> str:
    """The hash ``retrieval.embed.content_hash`` gives the whole file, read in chunks from ``fd``."""
    digest = hashlib.blake2b(digest_size=16)
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def open_indexed_file(
    expected: ExpectedFile, verified: VerifiedFiles | None = None, *, check_content: bool = True,
) -> BinaryIO:
    """The indexed file, open for reading at offset 0, only if it is still the file that was indexed.

    Raises ``ItemNotFoundError`` with the reason otherwise (see the module
    docstring). ``check_content=False`` skips the content hash (not the rest):
    for serving something made earlier from the checked file, such as a cached
    thumbnail, where a swapped file would not be read. The caller closes the
    returned file.
    """
    fd = _open(expected)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(expected, "is not a regular file any more")
        if expected.size is not None and st.st_size != expected.size or (
            expected.mtime_ns is not None and st.st_mtime_ns != expected.mtime_ns
        ):
            raise _refuse(expected, "changed since it was indexed (index the folder again)")
        same_inode = expected.identity is not None and (st.st_dev, st.st_ino) == (expected.identity.device,
                                                                                   expected.identity.inode)
        if check_content and not same_inode and (verified is None or not verified.known(expected, st)):
            actual = video_fingerprint_fd(fd, st.st_size) if expected.fingerprint else _content_hash(fd)
            if expected.hash is None or actual != expected.hash:
                raise _refuse(expected, "is not the file that was indexed (index the folder again)")
            if verified is not None:
                verified.remember(expected, st)
        return io.open(fd, "rb", closefd=True)  # noqa: SIM115 - handed to the caller, who closes it
    except BaseException:
        os.close(fd)
        raise
