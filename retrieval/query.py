"""Query building: weighted text/image terms, negatives, and result filters.

A combined query is the weighted sum of the unit vectors of its terms,
normalised again (negative weights push results away from a term). The CLI
writes a weight as a prefix: ``2:red`` or ``-0.5:leather``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Sequence

import numpy as np

from .errors import InvalidQueryError
from .store import ItemRow

TermKind = Literal["text", "image", "vector"]
Target = Literal["image", "text", "all"]

_WEIGHT_PREFIX = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)):(.*)$", re.S)


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: a text, an image (path or PIL image) or a raw vector, with a weight."""

    kind: TermKind
    value: object
    weight: float = 1.0

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> "QueryTerm":
        return cls("text", text, weight)

    @classmethod
    def image(cls, image: object, weight: float = 1.0) -> "QueryTerm":
        return cls("image", image, weight)


def parse_weighted(raw: str, *, negate: bool = False) -> tuple[float, str]:
    """Split an optional ``WEIGHT:`` prefix off a CLI value: ``"2:red"`` -> (2.0, "red")."""
    match = _WEIGHT_PREFIX.match(raw)
    weight, value = (float(match.group(1)), match.group(2)) if match else (1.0, raw)
    if not value.strip():
        raise InvalidQueryError(f"empty query term {raw!r}")
    return (-weight if negate else weight), value


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, normalised; raises if nothing positive is asked for."""
    if not vectors:
        raise InvalidQueryError("empty query: give some words to search for, or an image")
    if not any(w > 0 for w in weights):
        raise InvalidQueryError("a query needs at least one term with a positive weight")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for vec, weight in zip(vectors, weights):
        v = np.asarray(vec, dtype=np.float32)
        total += np.float32(weight) * v / max(float(np.linalg.norm(v)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise InvalidQueryError("the query terms cancel each other out")
    return total / norm


def _parse_date(value: str | datetime | None) -> float | None:
    if value is None or isinstance(value, datetime):
        return value.timestamp() if value else None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidQueryError(f"bad date {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


@dataclass(frozen=True)
class Filters:
    """Conditions every hit must meet; ``k`` counts results after filtering."""

    target: Target = "image"
    min_score: float | None = None
    path_prefix: str | None = None
    path_glob: str | None = None
    file_types: tuple[str, ...] = ()  # extensions without the dot, lower case: ("jpg", "png")
    modified_after: str | datetime | None = None
    modified_before: str | datetime | None = None
    _after: float | None = field(default=None, init=False, repr=False, compare=False)
    _before: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.target not in ("image", "text", "all"):
            raise InvalidQueryError(f"target must be image, text or all (got {self.target!r})")
        object.__setattr__(self, "_after", _parse_date(self.modified_after))
        object.__setattr__(self, "_before", _parse_date(self.modified_before))
        types = tuple(t.lower().lstrip(".") for t in self.file_types if t.strip())
        object.__setattr__(self, "file_types", types)

    @property
    def selects_paths(self) -> bool:
        return bool(self.path_prefix or self.path_glob or self.file_types or self._after or self._before)

    def accepts(self, row: ItemRow) -> bool:
        if self.target != "all" and row.kind != self.target:
            return False
        if not self.selects_paths:
            return True
        if row.path is None:  # path-based filters exclude texts
            return False
        if self.path_prefix and not row.path.startswith(os.path.abspath(os.path.expanduser(self.path_prefix))):
            return False
        if self.path_glob and not (
            fnmatch.fnmatch(row.path, self.path_glob) or fnmatch.fnmatch(os.path.basename(row.path), self.path_glob)
        ):
            return False
        if self.file_types and os.path.splitext(row.path)[1].lower().lstrip(".") not in self.file_types:
            return False
        mtime = (row.mtime_ns or 0) / 1e9
        if self._after is not None and mtime < self._after:
            return False
        if self._before is not None and mtime >= self._before:
            return False
        return True
