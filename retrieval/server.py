"""The HTTP API and the web page: a thin FastAPI adapter over :mod:`retrieval.api`.

``create_app(index)`` returns an ASGI app; ``mmsearch serve`` runs it with
uvicorn. Every answer comes from the Python API (``Index.search``,
``similar``, ``open_original``, ``thumbnail`` ...); this module only
translates HTTP to calls and errors to status codes. With
``clip_retrieval=True`` the same app also speaks clip-retrieval's back-end
protocol (:mod:`retrieval.server_clip_retrieval`) over this index and
``more_indexes``.

Concurrency: ``IndexStore`` holds one sqlite connection, which sqlite3 binds
to the thread that opened it. So the app opens its own ``Index`` objects on
one dedicated worker thread ("the index thread") and runs every call that
touches a store there, one at a time; torch already spreads each forward pass
over all cores. Searches waiting for that thread go before the ranking step
of uploads, whose decoding and image tower ran first on a small bounded pool
at a lower OS priority (:mod:`retrieval.server_files`); an upload beyond the
pool is refused before its body is read. Dependencies that only check
arguments are ``async`` so that they run on the event loop, not queued in the
thread pool behind a burst. Thumbnails and file streaming run in the
ordinary thread pool, concurrently.

Security (see docs/serving.md, "Running it safely"): files are served only by
item id, never by a client-given path, and only while they are still the files
that were indexed (``Index.open_original``); uploads must decode as images
within a pixel limit, in bounded numbers; query terms are bounded in number,
length and weight alike in JSON and forms. The Host check, the Origin rule,
body cap, token and error bodies live in :mod:`retrieval.server_guard`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints, model_validator

from .errors import ImageDecodeError, MMSearchError, VideoDecodeError
from .explain_report import explained_payload
from .query import QueryTerm, parse_terms
from .search import Filters, photo_info
from .server_guard import LOOPBACK_HOSTS, ApiError, RequestGuard, install_error_handlers, is_loopback, token_checker
from .server_files import DEFAULT_DECODE_QUEUE, DEFAULT_DECODE_WORKERS, DecodePool, UploadAdmission
from .server_ranges import stream_ranges
from .thumbnails import DEFAULT_THUMB_SIZE, THUMB_SIZES

if TYPE_CHECKING:
    from .api import Index, ItemRow
    from .duplicates import DuplicateGroup
    from .search import Hit

__all__ = ["create_app", "is_loopback", "LOOPBACK_HOSTS", "DEFAULT_MAX_UPLOAD_BYTES", "MAX_K", "MAX_ITEM_ID"]

IMAGE_SEARCH_PATH = "/api/search/image"
WEB_DIR = FilePath(__file__).resolve().parent / "web"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000  # ~120 MB of RGB once decoded; phones shoot 12-50 MP
MAX_K = 500
MAX_ITEM_ID = 2**63 - 1  # sqlite's largest integer: a larger id names no item
MAX_TERMS = 32  # terms per query, JSON or form
MAX_TERM_CHARS = 2000
MAX_WEIGHT = 10.0
T = TypeVar("T")
Target = Literal["image", "text", "all"]
ItemId = Annotated[int, Path(ge=0, le=MAX_ITEM_ID, description="an item id, as search results give it")]
FilterText = Annotated[str | None, StringConstraints(max_length=4096)]
DateText = Annotated[str | None, StringConstraints(max_length=64)]
PlaceText = Annotated[str | None, StringConstraints(max_length=256)]
Sort = Literal["score", "taken"]


# -- response and request models (they are the OpenAPI docs) -------------------------


class MomentOut(BaseModel):
    time: float = Field(description="seconds into the video")
    score: float = Field(description="cosine similarity of that moment's frame to the query")
    frame: int = Field(description="item id of the frame: its thumbnail, or 'more like this moment'")
    thumbnail: str | None = Field(None, description="URL of a JPEG of that moment")


class PhotoOut(BaseModel):
    """What a photo or video says about itself (only what is known): when, where, with what."""

    taken_at: str | None = Field(None, description="capture time, ISO 8601 (with its UTC offset when known)")
    taken_ts: float | None = Field(None, description="capture time, seconds since 1970 (UTC)")
    time_source: str | None = Field(None, description="where the time came from ('file-mtime': no date in the file)")
    utc_offset_min: int | None = None
    camera: str | None = Field(None, description="make and model")
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None
    place: str | None = Field(None, description="'City, Region, Country' from the position (offline gazetteer)")
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    place_cc: str | None = Field(None, description="ISO 3166 country code")


class HitOut(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity to the query (a video: its best moment's)")
    id: int
    kind: Literal["image", "text", "video"]
    path: str | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None
    name: str | None = Field(None, description="file name (images, videos)")
    width: int | None = Field(None, description="pixels, as shown (EXIF orientation or video rotation applied)")
    height: int | None = None
    thumbnail: str | None = Field(None, description="URL of a JPEG thumbnail (a video: of its best moment)")
    original: str | None = Field(None, description="URL of the original file (images, videos; range requests served)")
    time: float | None = Field(None, description="videos: seconds into the video of the best moment")
    frame: int | None = Field(None, description="videos: item id of the best moment's frame")
    play: str | None = Field(None, description="videos: URL that plays the video from the best moment (#t=SECONDS)")
    moments: list[MomentOut] | None = Field(None, description="videos: the best moments, best first")
    photo: PhotoOut | None = Field(None, description="capture time, camera and place, where the file has them")


class SearchOut(BaseModel):
    hits: list[HitOut]
    k: int
    took_ms: float


class ItemOut(BaseModel):
    id: int
    kind: Literal["image", "text", "video", "frame"]
    path: str | None = None
    name: str | None = None
    text: str | None = None
    size: int | None = Field(None, description="bytes")
    mtime_ns: int | None = Field(None, description="modification time, ns since 1970 (UTC)")
    width: int | None = None
    height: int | None = None
    status: str
    error: str | None = None
    meta: dict[str, Any] | None = None
    thumbnail: str | None = None
    original: str | None = None
    parent_id: int | None = Field(None, description="frames: the video's item id")
    time: float | None = Field(None, description="frames: seconds into the video")
    photo: PhotoOut | None = Field(None, description="capture time, camera and place, where the file has them")


class DuplicateMemberOut(BaseModel):
    id: int
    path: str | None = None
    name: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = Field(None, description="bytes")
    taken_at: str | None = None
    similarity: float = Field(description="cosine similarity to the copy to keep (1 for that copy)")
    exact_copy_of: int | None = Field(None, description="id of an earlier member with the same bytes")
    thumbnail: str
    original: str


class DuplicateGroupOut(BaseModel):
    keep: int = Field(description="id of the copy to keep: most pixels, then earliest capture, then larger file")
    all_exact: bool = Field(description="every other member is a byte copy of the kept one")
    members: list[DuplicateMemberOut]


class DuplicatesOut(BaseModel):
    groups: list[DuplicateGroupOut] = Field(description="largest groups first; nothing is ever deleted")
    total: int = Field(description="groups found (more than 'groups' holds when 'limit' cut the list)")
    threshold: float
    took_ms: float


class ErrorOut(BaseModel):
    status: int
    error: str
    message: str


class TermIn(BaseModel):
    """One query term: a text, or an indexed item (its stored vector); a negative weight pushes away."""

    text: str | None = Field(None, min_length=1, max_length=MAX_TERM_CHARS)
    item: int | None = Field(None, ge=0, le=MAX_ITEM_ID, description="id of an indexed item: 'more like this item'")
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)

    @model_validator(mode="after")
    def _one_kind(self) -> "TermIn":
        if (self.text is None) == (self.item is None):
            raise ValueError("a term has either 'text' or 'item'")
        return self


class SearchIn(BaseModel):
    """A combined query: the weighted sum of its terms (see ``Index.search``)."""

    terms: list[TermIn] = Field(min_length=1, max_length=MAX_TERMS)
    k: int = Field(10, ge=1, le=MAX_K)
    target: Target = "image"
    min_score: float | None = Field(None, ge=-1, le=1)
    under: FilterText = None
    glob: FilterText = None
    types: list[Annotated[str, StringConstraints(max_length=64)]] = Field(default_factory=list, max_length=32)
    after: FilterText = None
    before: FilterText = None
    taken_after: DateText = None
    taken_before: DateText = None
    place: PlaceText = None
    near: PlaceText = None
    within: float | None = Field(None, gt=0, le=20_038, description="kilometres from 'near'")
    camera: PlaceText = None
    has_gps: bool | None = None
    dedup: float | None = Field(None, ge=0, le=1)
    sort: Sort = "score"


class ExplainIn(BaseModel):
    """Why an item matched a query: the query's terms (as ``POST /api/search`` takes them) and how to draw it."""

    terms: list[TermIn] = Field(min_length=1, max_length=MAX_TERMS)
    method: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None, description="intgrad (default), gradcam, gradeclip, tokens, occlusion or rise")
    term: int | None = Field(None, ge=0, lt=MAX_TERMS, description="draw this term's share only (0-based)")
    max_side: int = Field(512, ge=32, le=2048, description="longest side of the overlay, pixels")


ERRORS = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 422, 500, 503)}
IMAGE_ROUTE_ERRORS = {415: {"model": ErrorOut, "description": "not an image, or more pixels than the limit"},
                      503: {"model": ErrorOut, "description": "too many uploads being decoded (see Retry-After)"}}


def filters_of(**raw: Any) -> Filters:
    """``Filters.parse`` with any complaint about the strings as a 400 (never a 500)."""
    try:
        return Filters.parse(**raw)
    except MMSearchError:
        raise
    except (ValueError, OverflowError) as exc:  # e.g. a date Python can parse but not place in time
        raise ApiError(400, "invalid_query", f"invalid filter: {exc}") from None


# Every filter a search takes, declared once: (name, type, constraints, description). The query-string
# and the form versions of the dependency are made from it, and the JSON body (SearchIn) has the same names.
_FILTER_PARAMS: tuple[tuple[str, Any, dict[str, Any], str], ...] = (
    ("target", Target, {}, "what to return; 'text' gives image->text"),
    ("min_score", float | None, {"ge": -1, "le": 1}, "lowest cosine similarity"),
    ("under", str | None, {"max_length": 4096}, "only files under this folder"),
    ("glob", str | None, {"max_length": 4096}, "only files whose path or name matches"),
    ("types", str | None, {"max_length": 1024}, "comma-separated extensions, e.g. jpg,png"),
    ("after", str | None, {"max_length": 64}, "modified on/after YYYY-MM-DD"),
    ("before", str | None, {"max_length": 64}, "modified before YYYY-MM-DD"),
    ("taken_after", str | None, {"max_length": 64}, "captured on/after YYYY-MM-DD[THH:MM] (the photo's local time)"),
    ("taken_before", str | None, {"max_length": 64}, "captured before YYYY-MM-DD[THH:MM]"),
    ("place", str | None, {"max_length": 256}, "city, region or country name (any case)"),
    ("near", str | None, {"max_length": 256}, "a place name or 'LAT,LON': photos taken within 'within' km"),
    ("within", float | None, {"gt": 0, "le": 20_038}, "kilometres from 'near' (default 25)"),
    ("camera", str | None, {"max_length": 256}, "camera make or model contains this (any case)"),
    ("has_gps", bool | None, {}, "only photos with (true) or without (false) a recorded position"),
)
_FILTER_NAMES = tuple(name for name, *_ in _FILTER_PARAMS)


def _filters_dependency(kind: Callable[..., Any]) -> Callable[..., Filters]:
    """A FastAPI dependency reading every filter from the query string (``Query``) or a form (``Form``)."""

    # async: pure checks, run on the event loop (a plain def would cost a trip through the thread pool)
    async def dependency(**raw: Any) -> Filters:
        return filters_of(**raw)

    dependency.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default="image" if name == "target" else None,
                          annotation=Annotated[tp, kind(description=text, **limits)])
        for name, tp, limits, text in _FILTER_PARAMS
    ], return_annotation=Filters)
    return dependency


_query_filters = _filters_dependency(Query)
_form_filters = _filters_dependency(Form)


async def _sort_query(sort: Annotated[Sort, Query(description="'taken': the k best, newest capture first")] = "score") -> str:
    return sort


async def _sort_form(sort: Annotated[Sort, Form(description="'taken': the k best, newest capture first")] = "score") -> str:
    return sort


def form_terms(texts: Sequence[str], not_texts: Sequence[str]) -> list[QueryTerm]:
    """``[WEIGHT:]TEXT`` form values as query terms, within the limits of the JSON endpoint.

    At most ``MAX_TERMS`` terms, each at most ``MAX_TERM_CHARS`` characters,
    each weight within ±``MAX_WEIGHT``: ``ApiError(422)`` otherwise.
    """
    if len(texts) + len(not_texts) > MAX_TERMS - 1:  # the image is a term too
        raise ApiError(422, "invalid_request", f"too many text terms: at most {MAX_TERMS - 1} with an image")
    terms = parse_terms(texts=texts, not_texts=not_texts)
    for term in terms:
        if len(str(term.value)) > MAX_TERM_CHARS:
            raise ApiError(422, "invalid_request", f"a text term is longer than {MAX_TERM_CHARS} characters")
        if not -MAX_WEIGHT <= term.weight <= MAX_WEIGHT:
            raise ApiError(422, "invalid_request", f"weight {term.weight:g} is out of range: use -{MAX_WEIGHT:g} to "
                           f"{MAX_WEIGHT:g}")
    return terms


def _image_links(item_id: int) -> dict[str, str]:
    return {"thumbnail": f"/api/items/{item_id}/thumbnail", "original": f"/api/items/{item_id}/original"}


def _play_link(video_id: int, seconds: float) -> str:
    """The URL that plays a video from ``seconds`` on (a media fragment on its original)."""
    text = f"{float(seconds):.3f}".rstrip("0").rstrip(".") or "0"
    return f"/api/items/{video_id}/original#t={text}"


def _hit_out(hit: "Hit", row: "ItemRow | None") -> dict[str, Any]:
    data = hit.as_dict()
    if hit.kind in ("image", "video") and hit.path is not None:
        data.update(name=os.path.basename(hit.path), **_image_links(hit.id))
        if row is not None:
            data.update(width=row.width, height=row.height)
    if hit.kind == "video" and hit.frame is not None and hit.time is not None:
        # The moment's picture, and the video playing from it (the original route serves ranges).
        data.update(thumbnail=f"/api/items/{hit.frame}/thumbnail", play=f"/api/items/{hit.id}/original{hit.fragment}")
        data["moments"] = [{**m, "thumbnail": f"/api/items/{m['frame']}/thumbnail"} for m in hit.moments or []]
    return data


def _item_out(row: "ItemRow") -> dict[str, Any]:
    import json

    data = {f: getattr(row, f) for f in ItemOut.model_fields if hasattr(row, f) and f != "meta"}
    try:
        meta = json.loads(row.meta) if row.meta else None
    except ValueError:
        meta = None
    data["meta"] = meta if isinstance(meta, dict) else None
    if row.path is not None:
        data["name"] = os.path.basename(row.path)
    if row.kind in ("image", "video") and row.status == "ok":
        data.update(_image_links(row.id))
    if row.kind == "frame" and row.parent_id is not None:
        data.update(thumbnail=f"/api/items/{row.id}/thumbnail", original=_play_link(row.parent_id, row.time or 0.0))
    data["photo"] = photo_info(row)
    return data


def _group_out(group: "DuplicateGroup") -> dict[str, Any]:
    data = group.as_dict()
    for member in data["members"]:
        member["name"] = os.path.basename(member["path"]) if member.get("path") else None
        member.update(_image_links(member["id"]))
    return data


# -- the app ----------------------------------------------------------------------------


class _IndexThread:
    """Runs callables on the one thread that owns the served indexes (see module docstring).

    Jobs wait in a priority queue: a search that only ranks (text, items) goes
    before the ranking that finishes an upload (``background=True``), so a
    burst of uploads does not put everyone else's searches at the back of the
    line. Equal priorities run in arrival order.
    """

    _STOP = object()

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="mmsearch-index", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is self._STOP:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[..., T], *args: Any, background: bool = False, **kwargs: Any) -> "Future[T]":
        if not self._thread.is_alive() or self._stopping:
            raise RuntimeError("the index thread has stopped")  # a job queued now would never run
        future: Future = Future()
        self._jobs.put((1 if background else 0, next(self._order), (future, fn, args, kwargs)))
        return future

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.submit(fn, *args, **kwargs).result()

    async def __call__(self, fn: Callable[..., T], *args: Any, background: bool = False, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, background=background, **kwargs))

    def shutdown(self) -> None:
        self._stopping = True
        self._jobs.put((2, next(self._order), self._STOP))  # after every job already queued
        self._thread.join()


class _Backend:
    """The served indexes, opened on the index thread; closed when the app stops, opened again if it restarts.

    An ASGI app's lifespan may run more than once (a test client per test, a
    fuzzer); the indexes' sqlite connections belong to the thread that opened
    them, so a restart opens them again, on a new thread.
    """

    def __init__(self, indexes: Sequence["Index"]) -> None:
        # (name, root, model): the model is loaded now, once, and kept across restarts.
        self._sources = [(index.path.name, index.path.parent, index.encoder) for index in indexes]
        self.names = [name for name, _, _ in self._sources]
        self.indexes: dict[str, "Index"] = {}
        self._thread: _IndexThread | None = None
        self.open()

    def open(self) -> None:
        """Open the indexes on a new index thread (nothing to do when open); a broken index raises now."""
        from .api import open_index

        if self._thread is not None:
            return
        thread = _IndexThread()
        try:
            opened = {name: thread.run(open_index, name, root=root, encoder=encoder)
                      for name, root, encoder in self._sources}
            for index in opened.values():
                thread.run(index.info)  # opens the connection now: a broken index fails at startup, not later
        except BaseException:
            thread.shutdown()
            raise
        self.indexes, self._thread = opened, thread

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            for index in self.indexes.values():
                thread.run(index.close)
            thread.shutdown()

    @property
    def main(self) -> "Index":
        """The index of the page and the JSON API."""
        return self.indexes[self.names[0]]

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        """``await backend(fn, ...)``: run ``fn`` on the index thread."""
        return self._index_thread()(fn, *args, **kwargs)

    def after_searches(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Like calling the backend, but queued behind the searches waiting now (the last step of an upload)."""
        return self._index_thread()(fn, *args, background=True, **kwargs)

    def _index_thread(self) -> _IndexThread:
        if self._thread is None:
            raise ApiError(503, "unavailable", "the server is stopping")
        return self._thread


class _LiveIndexes(Mapping[str, "Index"]):
    """The backend's indexes by name, as they are now (a restart replaces the objects, not the names)."""

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend

    def __getitem__(self, name: str) -> "Index":
        return self._backend.indexes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backend.names)

    def __len__(self) -> int:
        return len(self._backend.names)


def create_app(
    index: "Index",
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    allow_origins: Sequence[str] = (),
    clip_retrieval: bool = False,
    more_indexes: Sequence["Index"] = (),
    fetch_urls: bool = False,
    public_url: str | None = None,
    decode_workers: int = DEFAULT_DECODE_WORKERS,
    decode_queue: int = DEFAULT_DECODE_QUEUE,
) -> FastAPI:
    """The web page + JSON API over ``index``.

    The model is loaded now (once). ``token``: required by every route but
    health and the page (``Authorization: Bearer TOKEN``, Basic auth with the
    token as password, or the ``mmsearch_token`` cookie the page sets).
    ``allowed_hosts``: accepted ``Host`` header names (None: any).
    ``allow_origins``: web pages of these origins (``scheme://host[:port]`` or
    ``*``) may call the server (CORS); others may not POST. Request bodies over
    ``max_upload_bytes`` get 413; at most ``decode_workers`` uploads are decoded
    at once and ``decode_queue`` wait, beyond that 503.

    ``clip_retrieval``: also answer clip-retrieval's protocol (``/knn-service``,
    ``/metadata``, ``/indices-list``, ``/config.json``) over ``index`` (the
    default) and ``more_indexes``; ``fetch_urls`` lets its ``image_url`` name
    other servers' images; ``public_url`` is the base of the links it returns
    when a proxy hides the server's own. Raises ``MMSearchError`` for a token
    or origin no client could use, or clashing index names.
    """
    guard = RequestGuard(  # checks the origins and the token now, before any model loads
        None, max_body=max_upload_bytes, allowed_origins=allow_origins,
        allowed_hosts=None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts},
    )
    require_token = token_checker(token)
    names = [index.path.name, *(other.path.name for other in more_indexes)]
    if len(set(names)) != len(names):
        raise MMSearchError(f"an index is named twice: {', '.join(names)}")
    if more_indexes and not clip_retrieval:
        raise MMSearchError("more than one index is served only with the clip-retrieval protocol")

    image_side = int(getattr(index.encoder, "image_size", 0) or 0) or None  # loads the model, once
    # The server's own Index objects, opened on the index thread, so their sqlite connections live there.
    backend = _Backend([index, *more_indexes])
    decoder = DecodePool(decode_workers, decode_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend.open()  # again, if an earlier run of the app closed it
        app.state.index = backend.main
        yield
        backend.close()
        decoder.shutdown()

    app = FastAPI(
        title="mmsearch", version=_version(), lifespan=lifespan,
        description="Search an mmsearch index by text, by image, or both. The web page is at `/`.",
        responses=ERRORS,  # type: ignore[arg-type]
    )
    app.state.index = backend.main
    app.state.decoder = decoder
    # Inside the guard: a refused upload costs neither its body nor its form (see UploadAdmission).
    app.add_middleware(UploadAdmission, pool=decoder, paths=[IMAGE_SEARCH_PATH])
    app.add_middleware(RequestGuard, max_body=guard.max_body, allowed_hosts=guard.allowed_hosts,
                       allowed_origins=guard.allowed_origins)
    install_error_handlers(app)

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    async def row_of(item_id: int) -> "ItemRow":
        row = await backend(backend.main.item, item_id)
        if row is None:
            raise ApiError(404, "not_found", f"no item with id {item_id}")
        return row

    def search_rows(terms: list[QueryTerm], k: int, filters: Filters, dedup: float | None,
                    sort: str = "score") -> tuple[list, dict]:
        served = backend.main
        hits = served.search(terms, k, filters=filters, dedup=dedup, sort=sort)
        return hits, served.items([h.id for h in hits])

    def similar_rows(item_id: int, k: int, filters: Filters, dedup: float | None,
                     sort: str = "score") -> tuple[list, dict]:
        served = backend.main
        hits = served.similar(item_id, k, filters=filters, dedup=dedup, sort=sort)
        return hits, served.items([h.id for h in hits])

    def searched(found: tuple[list["Hit"], dict[int, "ItemRow"]], k: int, started: float) -> dict[str, Any]:
        hits, rows = found
        return {"hits": [_hit_out(h, rows.get(h.id)) for h in hits], "k": k,
                "took_ms": round((time.perf_counter() - started) * 1e3, 2)}

    @app.get("/api/health", tags=["server"], summary="Liveness: the server answers (no token needed)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/info", tags=["server"], summary="The index: model, counts, size; and the server's limits")
    async def info() -> dict[str, Any]:
        data = (await backend(backend.main.info)).as_dict()
        data["limits"] = {"max_upload_bytes": max_upload_bytes, "max_upload_pixels": max_upload_pixels,
                          "max_k": MAX_K, "max_terms": MAX_TERMS, "max_term_chars": MAX_TERM_CHARS,
                          "max_weight": MAX_WEIGHT, "thumbnail_sizes": list(THUMB_SIZES)}
        data["auth"] = token is not None
        return data

    @api.get("/search", response_model=SearchOut, response_model_exclude_none=True, tags=["search"],
             summary="Text search (text -> images or texts)")
    async def search_text(
        q: Annotated[str, Query(min_length=1, max_length=MAX_TERM_CHARS, description="what to look for, in words")],
        filters: Annotated[Filters, Depends(_query_filters)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Query(ge=0, le=1, description="drop hits this similar to a better hit")] = None,
        sort: Annotated[str, Depends(_sort_query)] = "score",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        return searched(await backend(search_rows, [QueryTerm.text(q)], k, filters, dedup, sort), k, started)

    @api.post("/search", response_model=SearchOut, response_model_exclude_none=True, tags=["search"],
              summary="Combined query: weighted texts and indexed items, negatives push away")
    async def search_combined(body: SearchIn) -> dict[str, Any]:
        started = time.perf_counter()
        filters = filters_of(**{name: getattr(body, name) for name in _FILTER_NAMES})
        terms = [QueryTerm.text(t.text, t.weight) if t.text is not None else QueryTerm.item(t.item, t.weight)
                 for t in body.terms]  # type: ignore[arg-type]
        return searched(await backend(search_rows, terms, body.k, filters, body.dedup, body.sort), body.k, started)

    @api.post(IMAGE_SEARCH_PATH.removeprefix(api.prefix), response_model=SearchOut, response_model_exclude_none=True,
              tags=["search"], summary="Search by an uploaded image, optionally with text terms ('WEIGHT:text')",
              responses=IMAGE_ROUTE_ERRORS)  # type: ignore[arg-type]
    async def search_image(
        image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, WebP, HEIC ...)")],
        filters: Annotated[Filters, Depends(_form_filters)],
        text: Annotated[list[Annotated[str, StringConstraints(max_length=MAX_TERM_CHARS + 32)]], Form(
            max_length=MAX_TERMS - 1, description="[WEIGHT:]TEXT terms to add, e.g. '2:red'")] = [],  # noqa: B006
        not_text: Annotated[list[Annotated[str, StringConstraints(max_length=MAX_TERM_CHARS + 32)]], Form(
            max_length=MAX_TERMS - 1, description="[WEIGHT:]TEXT terms to push away from")] = [],  # noqa: B006
        image_weight: Annotated[float, Form(ge=-MAX_WEIGHT, le=MAX_WEIGHT)] = 1.0,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Form(ge=0, le=1)] = None,
        sort: Annotated[str, Depends(_sort_form)] = "score",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        words = form_terms(text, not_text)  # cheap checks first: a refused form costs no decoding
        data = await image.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, "too_large", f"the upload is larger than {max_upload_bytes} bytes")
        # Decoded and embedded on the bounded pool: the image tower does not hold up the index thread,
        # which only ranks, so other people's searches do not wait behind a burst of uploads.
        _, vector = await decoder.decode_and_embed(data, backend.main.embed_image, min_side=image_side,
                                                   max_pixels=max_upload_pixels)
        terms = [QueryTerm.vector(vector, image_weight), *words]
        return searched(await backend.after_searches(search_rows, terms, k, filters, dedup, sort), k, started)

    @api.get("/items/{item_id}/similar", response_model=SearchOut, response_model_exclude_none=True, tags=["items"],
             summary="More like this: neighbours of an indexed item (no model run)")
    async def similar(
        item_id: ItemId, filters: Annotated[Filters, Depends(_query_filters)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Query(ge=0, le=1)] = None,
        sort: Annotated[str, Depends(_sort_query)] = "score",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        await row_of(item_id)
        return searched(await backend(similar_rows, item_id, k, filters, dedup, sort), k, started)

    @api.get("/duplicates", response_model=DuplicatesOut, response_model_exclude_none=True, tags=["items"],
             summary="Groups of near-identical photos, the copy to keep first (nothing is deleted)")
    async def duplicates(
        filters: Annotated[Filters, Depends(_query_filters)],
        threshold: Annotated[float, Query(ge=0.5, le=1, description="cosine at or above which photos group")] = 0.95,
        limit: Annotated[int, Query(ge=1, le=MAX_K, description="at most this many groups")] = 100,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        groups = await backend(backend.main.duplicates, threshold, filters=filters)
        return {"groups": [_group_out(g) for g in groups[:limit]], "total": len(groups), "threshold": threshold,
                "took_ms": round((time.perf_counter() - started) * 1e3, 2)}

    @api.get("/items/{item_id}", response_model=ItemOut, response_model_exclude_none=True, tags=["items"],
             summary="One item: path, size, dimensions, date, metadata")
    async def item(item_id: ItemId) -> dict[str, Any]:
        return _item_out(await row_of(item_id))

    @api.get("/items/{item_id}/thumbnail", tags=["items"], response_class=FileResponse,
             responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG"}},
             summary="JPEG thumbnail of an indexed image, or of a video at a moment (made once, cached, upright)")
    async def thumbnail(
        item_id: ItemId,
        size: Annotated[int, Query(description=f"longest side: one of {THUMB_SIZES}")] = DEFAULT_THUMB_SIZE,
    ) -> FileResponse:
        if size not in THUMB_SIZES:
            raise ApiError(422, "invalid_size", f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        row = await row_of(item_id)
        if row.kind in ("video", "frame"):
            row, moment = await backend(backend.main.shown_at, row)  # store reads: on the index thread
        else:
            moment = None
        try:
            path = await run_in_threadpool(partial(backend.main.thumbnail, row, size, time=moment))
        except (ImageDecodeError, VideoDecodeError) as exc:
            raise ApiError(404, "not_found", f"item {item_id}: {exc}") from None
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @api.get("/items/{item_id}/original", tags=["items"], response_class=StreamingResponse,
             responses={200: {"content": {"image/*": {}, "video/*": {}, "application/octet-stream": {}},
                              "description": "the file as it was indexed"},
                        206: {"description": "the bytes a Range header asked for (videos seek this way)"},
                        416: {"model": ErrorOut, "description": "a Range outside the file"}},
             summary="The original file of an indexed item (by id only, only while it is the file indexed; ranges)")
    async def original(
        item_id: ItemId,
        range_header: Annotated[str | None, Header(alias="Range", include_in_schema=False)] = None,
    ) -> StreamingResponse:
        row = await row_of(item_id)
        if row.kind == "frame":
            row, _ = await backend(backend.main.shown_at, row)  # a moment plays its video
        source, row = await run_in_threadpool(backend.main.open_original, row)
        assert row.path is not None
        return stream_ranges(source, row.path, range_header)

    @api.post("/items/{item_id}/explain", tags=["items"],
              summary="Why this item matched the query: a heatmap over the photo (PNG data URI) and its grid")
    async def explain(item_id: ItemId, body: ExplainIn) -> dict[str, Any]:
        row = await row_of(item_id)
        if row.kind != "image":
            raise ApiError(422, "not_a_picture", f"item {item_id} is a {row.kind}: heatmaps are drawn on pictures")
        terms = [QueryTerm.text(t.text, t.weight) if t.text is not None else QueryTerm.item(t.item, t.weight)
                 for t in body.terms]  # type: ignore[arg-type]
        options = {} if body.method is None else {"method": body.method}
        # On the index thread (the query's item terms and the picture's path are store reads); the
        # model's passes run there too, a few encodes' worth, like an image search's.
        drawn = await backend(backend.main.explain_overlay, terms, item_id, max_side=body.max_side, format="PNG",
                              term=body.term, **options)
        return explained_payload(drawn)

    app.include_router(api)

    if clip_retrieval:
        from .server_clip_retrieval import clip_retrieval_router

        app.include_router(clip_retrieval_router(
            _LiveIndexes(backend), run=backend, require_token=require_token, max_k=MAX_K,
            fetch_urls=fetch_urls, public_url=public_url, decoder=decoder, max_image_bytes=max_upload_bytes,
            max_image_pixels=max_upload_pixels,
        ))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _version() -> str:
    from . import __version__

    return __version__
