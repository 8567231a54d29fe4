"""What an index store reads and writes: its file names, item rows, new items, the model record, photo statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .store_schema import ITEM_COLUMNS, PATH_COLUMNS, from_db

ITEMS_DB = "items.sqlite"
FAISS_FILE = "index.faiss"
LOCK_FILE = "write.lock"
READ_LOCK_FILE = "read.lock"

_ITEM_SELECT = "SELECT " + ", ".join(ITEM_COLUMNS) + " FROM items"
# An image's capture metadata (see retrieval.photo_store), written by the indexer and the back-fill.
PHOTO_COLUMNS: tuple[str, ...] = ITEM_COLUMNS[ITEM_COLUMNS.index("taken_at"):ITEM_COLUMNS.index("meta_version") + 1]
_PATH_POSITIONS = tuple(i for i, c in enumerate(ITEM_COLUMNS) if c in PATH_COLUMNS)


@dataclass(frozen=True)
class ModelRecord:
    """The model that made an index's vectors: what both manifest.json and items.sqlite record."""

    model: str
    fingerprint: str
    dim: int


@dataclass(frozen=True)
class ItemRow:
    """One stored item, as a search hit or a listing needs it (the columns of store_schema.ITEM_COLUMNS)."""

    id: int
    kind: str
    key: str
    path: str | None
    text: str | None
    size: int | None
    mtime_ns: int | None
    hash: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    meta: str | None
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None
    parent_id: int | None = None
    time: float | None = None
    taken_at: str | None = None
    taken_ts: float | None = None
    local_ts: float | None = None
    time_source: str | None = None
    utc_offset_min: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    place_cc: str | None = None
    meta_version: int | None = None

    @classmethod
    def from_db(cls, values: tuple) -> "ItemRow":
        row = list(values)
        for i in _PATH_POSITIONS:
            row[i] = from_db(row[i])
        return cls(*row)


@dataclass(frozen=True)
class NewItem:
    """An item to write; ``vector`` is None for a failed one (or for a video, whose frames carry the vectors)."""

    kind: str
    key: str
    path: str | None = None
    text: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    hash: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    meta: str | None = None
    vector: np.ndarray | None = None
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None
    parent_id: int | None = None
    time: float | None = None
    taken_at: str | None = None
    taken_ts: float | None = None
    local_ts: float | None = None
    time_source: str | None = None
    utc_offset_min: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    place_cc: str | None = None
    meta_version: int | None = None
    ok_without_vector: bool = False  # a video: status ok, its frames hold the vectors


@dataclass(frozen=True)
class PhotoStats:
    """What an index's photos say about themselves, for ``mmsearch info``.

    Counts are of searchable image items. A capture time is one the file's
    metadata gives (EXIF, XMP, IPTC, GPS); ``file_time_only`` items are dated by
    their file's modification time alone. ``first_taken``/``last_taken`` are
    dates (YYYY-MM-DD) on the photos' own clocks. ``cameras`` and ``countries``
    map a name to its number of photos, most first. ``not_read`` photos have no
    metadata yet: the next ``mmsearch index`` of their folder reads it.
    """

    images: int = 0
    with_capture_time: int = 0
    file_time_only: int = 0
    first_taken: str | None = None
    last_taken: str | None = None
    with_gps: int = 0
    with_place: int = 0
    not_read: int = 0
    cameras: dict[str, int] = field(default_factory=dict)
    countries: dict[str, int] = field(default_factory=dict)
