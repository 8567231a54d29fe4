"""Helpers for tests that compare two indexes item by item (engines, merges)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np


def snapshot(root: Path, name: str) -> dict[str, tuple]:
    """key -> (id, status, error, vector or None), straight from items.sqlite."""
    db = sqlite3.connect(root / name / "items.sqlite")
    try:
        rows = db.execute(
            "SELECT i.id, i.key, i.status, i.error, v.vec FROM items i LEFT JOIN vectors v ON v.id = i.id"
        ).fetchall()
    finally:
        db.close()
    return {
        key: (item_id, status, error, None if vec is None else np.frombuffer(vec, dtype=np.float32))
        for item_id, key, status, error, vec in rows
    }


def assert_same_index(a: dict[str, tuple], b: dict[str, tuple], min_cosine: float = 0.999) -> None:
    """Same keys, and per key the same id, status and failure reason, and vectors at cosine >= ``min_cosine``."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key][:3] == b[key][:3], key
        if a[key][3] is None:
            assert b[key][3] is None, key
        else:
            assert float(np.dot(a[key][3], b[key][3])) >= min_cosine, key


def skipped_lines(stderr: str) -> set[str]:
    """The CLI's 'skipped: PATH: REASON' lines."""
    return {line for line in stderr.splitlines() if line.startswith("skipped: ")}
