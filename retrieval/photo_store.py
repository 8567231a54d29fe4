"""Capture metadata as an index stores it: columns, place names, twins, and the back-fill.

:mod:`retrieval.photo_meta` reads what a file says (time, camera, lens, GPS);
this module turns that into the item columns of items.sqlite (schema 2:
``taken_at`` ... ``place_cc``, ``meta_version``), names places for GPS
positions (one gazetteer query per committed batch, :func:`retrieval.places.places_of`),
gives a file reused by content its twin's metadata, and back-fills items
indexed without metadata (by an older mmsearch, or embedded on Ray) from their
files, in batches of transactions, without re-encoding anything.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from .embed import default_workers
from .photo_meta import META_VERSION, PhotoMeta, file_time_meta, read_photo_metadata
from .sources import FileEntry
from .store import IndexStore, NewItem
from .urls import is_url, url_reader

if TYPE_CHECKING:
    from .indexer import UpdatePlan

__all__ = ["BACKFILL_BATCH", "backfill_metadata", "photo_columns", "twin_photo_columns", "with_places"]

BACKFILL_BATCH = 256  # items per back-fill transaction: a crash keeps every committed batch


def photo_columns(meta: PhotoMeta | None) -> dict[str, Any]:
    """The item columns of ``meta`` (places not yet named); ``{}`` when it was not read."""
    if meta is None:
        return {}
    return {
        "taken_at": meta.taken_at, "taken_ts": meta.taken_ts, "local_ts": meta.local_ts,
        "time_source": meta.time_source, "utc_offset_min": meta.utc_offset_min,
        "camera_make": meta.camera_make, "camera_model": meta.camera_model, "lens": meta.lens,
        "gps_lat": meta.gps_lat, "gps_lon": meta.gps_lon, "gps_alt": meta.gps_alt,
        "meta_version": META_VERSION,
    }


def twin_photo_columns(store: IndexStore, content_hash: str, mtime_ns: int | None) -> dict[str, Any]:
    """The metadata of the indexed item with these bytes, for a copy of it; ``{}`` if it has none yet.

    Same bytes, same EXIF: everything is the twin's, except a capture time the
    twin took from its own file time, which for the copy is the copy's file time.
    """
    columns = store.photo_of_hash(content_hash, META_VERSION)
    if not columns:
        return {}
    if columns.get("time_source") == "file-mtime":
        own = file_time_meta(PhotoMeta(), mtime_ns)
        columns.update(taken_at=own.taken_at, taken_ts=own.taken_ts, local_ts=own.local_ts,
                       time_source=own.time_source, utc_offset_min=own.utc_offset_min)
    return columns


def _place_columns(points: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """Place columns for each (lat, lon), in one gazetteer query; ``{}`` for a position far from any place."""
    from .places import places_of  # the gazetteer loads only when a photo has a position

    places = places_of([p[0] for p in points], [p[1] for p in points])
    return [
        {"place_city": p.city, "place_region": p.region, "place_country": p.country, "place_cc": p.country_code}
        if p is not None else {}
        for p in places
    ]


def with_places(items: list[NewItem]) -> list[NewItem]:
    """``items`` with place names for those that have a GPS position and no place yet."""
    located = [i for i, it in enumerate(items)
               if it.gps_lat is not None and it.gps_lon is not None and it.place_cc is None]
    if not located:
        return items
    out = list(items)
    named = _place_columns([(items[i].gps_lat, items[i].gps_lon) for i in located])  # type: ignore[misc]
    for i, columns in zip(located, named):
        if columns:
            out[i] = replace(items[i], **columns)
    return out


def _read_metadata(entry: FileEntry, read: Any) -> PhotoMeta | None:
    """The metadata of one file, reading only its headers; None when the file cannot be read now."""
    location = str(entry.path)
    if read is not None and is_url(location):
        data, _ = read(entry)
        return None if data is None else read_photo_metadata(data, mtime_ns=entry.mtime_ns)
    try:
        with open(location, "rb") as fh:  # Pillow reads the headers it needs, not the pixels
            return read_photo_metadata(fh, mtime_ns=entry.mtime_ns)
    except OSError:
        return None  # gone or unreadable: the item keeps no metadata and the next run tries again


def backfill_metadata(store: IndexStore, plan: "UpdatePlan", *, batch: int = BACKFILL_BATCH,
                      workers: int = 0) -> int:
    """Read the capture metadata of ``plan.backfill``'s files into their items -> how many were written.

    Headers only (no pixel is decoded, no vector changes), ``workers`` threads
    overlapping the reads, one transaction per ``batch`` items, places named
    per batch. A file that cannot be read now is left for the next run.
    """
    entries = plan.backfill or []
    if not entries:
        return 0
    read = url_reader() if any(is_url(str(e.path)) for e in entries) else None
    written = 0
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="mmsearch-meta") as pool:
        for start in range(0, len(entries), batch):
            chunk = entries[start:start + batch]
            metas = list(pool.map(lambda e: _read_metadata(e, read), chunk))
            rows = [(str(e.path), photo_columns(m)) for e, m in zip(chunk, metas) if m is not None]  # item keys
            located = [i for i, (_, c) in enumerate(rows) if c["gps_lat"] is not None and c["gps_lon"] is not None]
            if located:
                named = _place_columns([(rows[i][1]["gps_lat"], rows[i][1]["gps_lon"]) for i in located])
                for i, columns in zip(located, named):
                    rows[i][1].update(columns)
            written += store.write_photo_metadata(rows)
    plan.backfill = []
    return written
