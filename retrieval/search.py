"""From a query vector to ranked hits: filters, the exact re-rank, dedup.

This module owns everything between "here is a unit vector" and "here are the
results": which items may be returned (:class:`Filters`, built once from the
strings a command line, a query string or a form gives: paths, file dates,
and the photos' own capture time, place, camera and position), exact
re-scoring of approximate candidates (:func:`rerank`, from the index's
re-rank copy or the stored vectors; also what the ANN tuner measures with), near-duplicate suppression, the order of the results
(:data:`SORTS`), and the :class:`Hit` a caller gets.
Turning query terms into that vector is :mod:`retrieval.query`'s job.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from .errors import InvalidQueryError
from .photo_filters import PhotoConditions, parse_flag, parse_km, photo_info
from .video_files import format_clock, format_seconds
from .video_moments import with_moments

if TYPE_CHECKING:
    from .ann import VectorIndex
    from .store import IndexStore, ItemRow

Target = Literal["image", "text", "all", "auto"]
# "auto" (what a command line gets without --target): images, or texts on an index that holds no image.
TARGETS: tuple[str, ...] = ("image", "text", "all", "auto")
# How the k results are ordered: by score (best first), or the same k best matches by capture time
# (newest first; photos with no known time last, by score). See sort_hits.
Sort = Literal["score", "taken"]
SORTS: tuple[str, ...] = ("score", "taken")


# --type values that name kinds of items rather than file extensions.
_KIND_WORDS = {"image": "image", "images": "image", "photo": "image", "photos": "image",
               "video": "video", "videos": "video"}


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is the cosine similarity to the query.

    A video is one hit (``kind="video"``, ``id`` and ``path`` the video's) at
    its best-matching moment: ``time`` (seconds into it), ``frame`` (the item
    id of that moment's frame: its thumbnail, or ``similar`` from it) and
    ``moments``, the video's best moments, best first (``{"time", "score",
    "frame"}``; the first is the hit's own). ``score`` is the best moment's.
    """

    rank: int
    score: float
    id: int
    kind: str
    path: str | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None
    photo: dict[str, Any] | None = None  # capture time, camera, position, place (photo_filters.photo_info)
    time: float | None = None
    frame: int | None = None
    moments: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}

    @property
    def clock(self) -> str | None:
        """A video hit's moment as people read it (``01:23.2``); None for other hits."""
        return format_clock(self.time) if self.kind == "video" and self.time is not None else None

    @property
    def fragment(self) -> str:
        """A video hit's moment as a media fragment for its file's URL (``#t=83.2``); ``""`` for other hits."""
        return f"#t={format_seconds(self.time)}" if self.kind == "video" and self.time is not None else ""


# -- filters ------------------------------------------------------------------------


def _parse_date(value: str | datetime | None) -> float | None:
    """POSIX seconds of a date (a naive one is local time); years far from now are fine (0001-01-01 too)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        if not isinstance(value, str):
            raise InvalidQueryError(f"bad date {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM")
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidQueryError(f"bad date {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    try:
        return value.timestamp()
    except (OverflowError, OSError, ValueError):
        # The platform's local-time conversion covers only some years; far ones are read as UTC.
        from datetime import timezone

        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return (aware - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds()


@dataclass(frozen=True)
class Filters:
    """Conditions every hit must meet; ``k`` counts results after filtering.

    Besides paths and file dates, photos are filtered by what they say about
    themselves (read at index time, see :mod:`retrieval.photo_meta`):

    - ``taken_after``/``taken_before``: capture date on the photo's own clock
      (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM``, the start of
      that period; after is inclusive, before exclusive); a photo with no date
      in its file is dated by its file time;
    - ``place``: a city, region or country name (any language GeoNames or CLDR
      has, accents optional, ``"Paris, Texas"`` to pick one);
    - ``near`` (a city, or ``"LAT,LON"``) within ``within_km`` (default 25 km);
    - ``camera``: every word occurs in "make model", any case ("iphone 12");
    - ``has_gps``: True, only photos with a position; False, only those without.

    Photo conditions (:mod:`retrieval.photo_filters`) exclude texts; videos
    meet them with the capture time, place and camera of their container.
    ``target="image"`` returns photos and videos; ``file_types`` may name
    kinds as well as extensions: ``("video",)`` only videos, ``("image",)``
    only photos, ``("video", "jpg")`` videos and JPEGs. Bad values raise
    ``InvalidQueryError`` naming the value.
    """

    target: Target = "image"
    min_score: float | None = None
    path_prefix: str | None = None
    path_glob: str | None = None
    file_types: tuple[str, ...] = ()  # extensions without the dot, lower case: ("jpg", "png")
    modified_after: str | datetime | None = None
    modified_before: str | datetime | None = None
    taken_after: str | datetime | None = None
    taken_before: str | datetime | None = None
    place: str | None = None
    near: str | None = None
    within_km: float | None = None
    camera: str | None = None
    has_gps: bool | None = None
    _after: float | None = field(default=None, init=False, repr=False, compare=False)
    _before: float | None = field(default=None, init=False, repr=False, compare=False)
    _photo: PhotoConditions | None = field(default=None, init=False, repr=False, compare=False)
    _kinds: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _extensions: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or self.target not in TARGETS:
            raise InvalidQueryError(f"target must be image, text or all (got {self.target!r})")
        for name in ("path_prefix", "path_glob", "place", "near", "camera"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidQueryError(f"filter {name} must be a text (got {value!r})")
        if isinstance(self.file_types, str) or not isinstance(self.file_types, (tuple, list)) \
                or not all(isinstance(t, str) for t in self.file_types):
            raise InvalidQueryError(f"file types must be a list of extensions (got {self.file_types!r})")
        if self.min_score is not None:
            if isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float)) \
                    or not math.isfinite(self.min_score):
                raise InvalidQueryError(f"--min-score must be a number between -1 and 1 (got {self.min_score!r})")
        if self.path_prefix is not None and not str(self.path_prefix).strip():
            raise InvalidQueryError("--under needs a folder (an empty one names nothing)")
        object.__setattr__(self, "_after", _parse_date(self.modified_after))
        object.__setattr__(self, "_before", _parse_date(self.modified_before))
        types = tuple(t.strip().lower().lstrip(".") for t in self.file_types if t.strip())
        object.__setattr__(self, "file_types", types)
        object.__setattr__(self, "_kinds", frozenset(_KIND_WORDS[t] for t in types if t in _KIND_WORDS))
        object.__setattr__(self, "_extensions", frozenset(t for t in types if t not in _KIND_WORDS))
        photo = PhotoConditions.parse(
            taken_after=self.taken_after, taken_before=self.taken_before, place=self.place, near=self.near,
            within_km=self.within_km, camera=self.camera, has_gps=self.has_gps,
        )
        object.__setattr__(self, "_photo", photo)

    @classmethod
    def parse(
        cls,
        *,
        target: str | None = None,  # None: "auto"
        min_score: float | None = None,
        under: str | None = None,
        glob: str | None = None,
        types: str | Sequence[str] | None = None,
        after: str | None = None,
        before: str | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        place: str | None = None,
        near: str | None = None,
        within: float | str | None = None,
        camera: str | None = None,
        has_gps: bool | str | None = None,
        default_target: str = "auto",
    ) -> "Filters":
        """Filters from the strings a command line, a query string or a form gives.

        Empty strings mean "no condition"; ``types`` is ``"jpg,png"`` or a list of
        such strings (a repeated parameter); ``within`` is kilometres ("25" or
        "25km"); ``has_gps`` is true/false (also "1"/"0", "yes"/"no").
        """
        if types is not None and not isinstance(types, (str, list, tuple)):
            raise InvalidQueryError(f"types must be a text like 'jpg,png' or a list of such (got {types!r})")
        raw_types = [types] if isinstance(types, str) else list(types or [])
        if not all(isinstance(raw, str) for raw in raw_types):
            raise InvalidQueryError(f"types must be a text like 'jpg,png' or a list of such (got {types!r})")
        for name, value in (("target", target), ("under", under), ("glob", glob), ("after", after),
                            ("before", before), ("place", place), ("near", near), ("camera", camera)):
            if value is not None and not isinstance(value, str):
                raise InvalidQueryError(f"{name} must be a text (got {value!r})")
        return cls(
            target=(target or default_target),  # type: ignore[arg-type]
            min_score=min_score, path_prefix=under or None, path_glob=glob or None,
            file_types=tuple(t for raw in raw_types for t in raw.split(",")),
            modified_after=after or None, modified_before=before or None,
            taken_after=taken_after or None, taken_before=taken_before or None, place=place or None,
            near=near or None, within_km=parse_km(within), camera=camera or None,
            has_gps=parse_flag(has_gps, "has_gps"),
        )

    @property
    def selects_paths(self) -> bool:
        return bool(self.path_prefix or self.path_glob or self.file_types or self._after or self._before)

    @property
    def selects_photos(self) -> bool:
        """Whether a condition on the photos' own metadata is set (such conditions exclude texts)."""
        return self._photo is not None

    def resolved(self, images: int, texts: int) -> "Filters":
        """These filters with ``target="auto"`` settled for an index holding ``images`` and ``texts`` items."""
        if self.target != "auto":
            return self
        from dataclasses import replace

        return replace(self, target="text" if images == 0 and texts > 0 else "image")

    def accepts(self, row: "ItemRow") -> bool:
        """Whether an item may be returned (a video frame is judged by its video's row)."""
        if self.target not in ("all", "auto") and row.kind != self.target and not (
                self.target == "image" and row.kind == "video"):
            return False
        if self._photo is not None and not self._photo.accepts(row):
            return False
        if not self.selects_paths:
            return True
        if row.path is None:  # path-based filters exclude texts
            return False
        if self.path_prefix and not _is_under(row.path, self.path_prefix):
            return False
        if self.path_glob and not (
            fnmatch.fnmatch(row.path, self.path_glob) or fnmatch.fnmatch(os.path.basename(row.path), self.path_glob)
        ):
            return False
        if self.file_types and row.kind not in self._kinds and (
                os.path.splitext(row.path)[1].lower().lstrip(".") not in self._extensions):
            return False
        mtime = (row.mtime_ns or 0) / 1e9
        if self._after is not None and mtime < self._after:
            return False
        if self._before is not None and mtime >= self._before:
            return False
        return True


def sort_hits(hits: list[Hit], by: str = "score") -> list[Hit]:
    """``hits`` (best first) in the order ``by`` names, ranks renumbered to the new positions.

    ``"taken"``: the same hits by capture time, newest first (the time from the
    photo's metadata, else its file time); hits with no time (texts, photos not
    read yet) come last, best first. ``"score"`` leaves them as they are.
    """
    if by not in SORTS:
        raise InvalidQueryError(f"sort must be one of {', '.join(SORTS)} (got {by!r})")
    if by == "score":
        return hits
    from dataclasses import replace

    def newest_first(hit: Hit) -> tuple[bool, float]:
        taken = (hit.photo or {}).get("taken_ts")
        return (taken is None, -(taken or 0.0))

    ordered = sorted(hits, key=newest_first)  # stable: equal times keep their score order
    return [replace(h, rank=i + 1) for i, h in enumerate(ordered)]


def _is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it: a path match, so /a/2023 does not take /a/2023-old."""
    base = os.path.abspath(os.path.expanduser(folder)).rstrip(os.sep)
    return path == base or path.startswith(base + os.sep) or base == ""


# -- ranking ------------------------------------------------------------------------


VectorFetch = Callable[[np.ndarray], np.ndarray]  # ids -> their vectors, one row per id


def rerank(
    query: np.ndarray, candidates: np.ndarray, fetch: VectorFetch, *, refine: VectorFetch | None = None,
    top: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of candidate ids from their vectors, best first.

    ``fetch`` reads the vectors: the stored float32 ones (exact scores), or a
    compact copy whose cosines are within its ``max_error`` (~5e-4 for
    float16) of the exact ones. With ``refine`` (the exact vectors) and
    ``top``, the copy chooses the first ``top`` and ``refine`` re-scores just
    those: they come first, in exact order with exact scores, and each is
    within ``2 * max_error`` of the exact ``top``-th best; later ones keep
    approximate scores. (Re-scoring every candidate near the ``top``-th from
    float32 made the top exactly float32's, but on 1M CLIP-like vectors
    nearly every candidate of a query lies within 1e-3 of it, so that read
    them all: +0.4-3 ms a query for +0.001 recall; docs/scaling.md.) Padding (-1)
    and repeated ids are dropped; ties keep id order. The one re-rank: queries
    use it (through :func:`rerank_candidates`) and so does the ANN tuner, so
    what is tuned is what is served.
    """
    cand = np.unique(candidates[candidates >= 0])
    if len(cand) == 0:
        return np.zeros(0, dtype=np.float32), cand
    scores = fetch(cand) @ query
    order = np.argsort(-scores, kind="stable")
    if refine is None or top <= 0:
        return scores[order], cand[order]
    head, rest = order[:top], order[top:]
    exact = refine(cand[head]) @ query
    first = np.argsort(-exact, kind="stable")
    return np.concatenate([exact[first], scores[rest]]), np.concatenate([cand[head][first], cand[rest]])


def rerank_candidates(
    query: np.ndarray, candidates: np.ndarray, index: "VectorIndex", exact: VectorFetch, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """How queries and the tuner re-rank an index's candidates: from its re-rank copy when it has one.

    The copy (float16, memory-mapped beside index.faiss) is read for every
    candidate and chooses the ``top``; those are re-scored from ``exact``
    (the stored float32 vectors), so the scores shown are exact.
    Without a copy (HNSW, or a copy that is missing or stale) every candidate
    is read from ``exact``.
    """
    copy = index.copy
    if copy is None:
        return rerank(query, candidates, exact)
    return rerank(query, candidates, copy.fetch, refine=exact, top=top)


def normalise(vector: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy of a 1-d vector; a zero vector is an error."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-8:
        raise InvalidQueryError("the query vector is zero (e.g. a term cancelled by its negation)")
    return v / norm


def search_vector(
    store: "IndexStore",
    index: "VectorIndex",
    vector: np.ndarray,
    k: int = 10,
    *,
    exclude_ids: frozenset[int] = frozenset(),
    filters: Filters | None = None,
    dedup: float | None = None,
    sort: str = "score",
) -> list[Hit]:
    """The ``k`` items nearest to ``vector`` that pass ``filters``, best first (or as ``sort`` says).

    Candidates are fetched in growing rounds until ``k`` pass the filters (or
    the index is exhausted), so ``k`` means k results after filtering. With
    ``dedup``, a hit whose cosine to a better hit is >= ``dedup`` is dropped.
    ``sort="taken"`` orders those k results by capture time (:func:`sort_hits`).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidQueryError(f"k must be a whole number of at least 1 (got {k!r})")
    if sort not in SORTS:
        raise InvalidQueryError(f"sort must be one of {', '.join(SORTS)} (got {sort!r})")
    return sort_hits(_nearest(store, index, vector, k, exclude_ids=exclude_ids, filters=filters, dedup=dedup), sort)


def _nearest(
    store: "IndexStore",
    index: "VectorIndex",
    vector: np.ndarray,
    k: int,
    *,
    exclude_ids: frozenset[int],
    filters: Filters | None,
    dedup: float | None,
) -> list[Hit]:
    if filters is not None and filters.target == "auto":
        images = store.has_kind("image") or store.has_kind("video")
        filters = filters.resolved(images=int(images), texts=int(store.has_kind("text")))
    if dedup is not None and (isinstance(dedup, bool) or not isinstance(dedup, (int, float)) or not 0 <= dedup <= 1):
        raise InvalidQueryError(f"dedup must be a cosine between 0 and 1 (got {dedup!r})")
    if vector.shape[-1] != store.manifest.dim:
        raise InvalidQueryError(
            f"query vector has {vector.shape[-1]} dimensions, the index has {store.manifest.dim}"
        )
    query = normalise(vector)
    fetch = k + len(exclude_ids)
    hits: list[Hit] = []
    while True:
        depth = int(index.config.search.get("rerank", 1))
        scores, ids = index.search(query[None, :], fetch * depth)
        if not index.config.exact_scores or not index.supports_remove:
            # Compressed codes give approximate scores, and HNSW may hold stale
            # copies of updated ids: re-score the candidates from stored vectors.
            exact, cand = rerank_candidates(query, ids[0], index, store.vectors_of, fetch)
            scores, ids = exact[None, :], cand[None, :]
            # Past the first ``fetch``, scores came from the re-rank copy alone (when there is one).
            approximate = {int(i) for i in cand[fetch:]} if index.copy is not None else set()
        else:
            approximate = set()
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in exclude_ids]
        rows = store.items_by_id([i for _, i in found])
        # A frame stands for its video: the video's row is what filters judge and what the hit shows.
        videos = store.items_by_id(sorted({r.parent_id for r in rows.values()
                                           if r.kind == "frame" and r.parent_id is not None}))
        hits = []
        seen_videos: set[int] = set()
        kept: list[np.ndarray] = []
        below_min = False
        for score, item_id in found:
            if filters is not None and filters.min_score is not None and score < filters.min_score:
                below_min = True  # scores come best first: nothing after this can pass
                break
            row = rows.get(item_id)
            if row is None:  # removed since the ANN index was loaded
                continue
            shown = row
            if row.kind == "frame":
                shown = videos.get(row.parent_id)  # type: ignore[arg-type]
                if shown is None or shown.id in seen_videos or shown.id in exclude_ids:
                    continue  # a moment of a video already answered (at a better moment), or gone
            if filters is not None and not filters.accepts(shown):
                continue
            if item_id in approximate:  # past the re-scored head (filters took some of it): show the exact score
                vec = store.vector(item_id)
                score = float(vec @ query) if vec is not None else score
            if dedup is not None:
                vec = store.vector(item_id)
                if vec is not None and any(float(vec @ other) >= dedup for other in kept):
                    continue
                if vec is not None:
                    kept.append(vec)
            if row.kind == "frame":
                seen_videos.add(shown.id)
                hits.append(Hit(rank=len(hits) + 1, score=score, id=shown.id, kind="video", path=shown.path,
                                meta=_meta(shown.meta), photo=photo_info(shown), time=row.time, frame=row.id))
            else:
                hits.append(Hit(rank=len(hits) + 1, score=score, id=item_id, kind=row.kind, path=row.path,
                                text=row.text, meta=_meta(row.meta), photo=photo_info(row)))
            if len(hits) == k:
                return with_moments(store, query, hits, filters)
        if below_min or fetch >= index.ntotal:
            return with_moments(store, query, hits, filters)
        fetch = min(index.ntotal, fetch * 2)


def _meta(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None
