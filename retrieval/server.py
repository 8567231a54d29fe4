"""The HTTP API and the web page: a thin FastAPI adapter over :mod:`retrieval.api`.

``create_app(index)`` returns an ASGI app; ``mmsearch serve`` runs it with
uvicorn. Every answer comes from the Python API (``Index.search``,
``similar``, ``info`` ...); this module only translates HTTP to calls and
errors to status codes.

Concurrency: ``IndexStore`` holds one sqlite connection, which sqlite3 binds
to the thread that opened it. So the app opens its own ``Index`` on one
dedicated worker thread ("the index thread") and runs every call that
touches the index there, one at a time; torch already spreads each forward
pass over all cores. Upload decoding, thumbnails and file streaming run in
the ordinary threadpool, concurrently.

Security (see docs/serving.md, "Running it safely"): files are served only by item
id, never by a client-given path; uploads must decode as images within a
pixel limit. The Host check, body cap, token and error bodies live in
:mod:`retrieval.server_guard`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Callable, Literal, Sequence, TypeVar

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator

from .errors import ImageDecodeError
from .query import QueryTerm, parse_terms, read_query_image
from .search import Filters
from .server_guard import LOOPBACK_HOSTS, ApiError, RequestGuard, install_error_handlers, is_loopback, token_checker
from .thumbnails import DEFAULT_THUMB_SIZE, THUMB_SIZES

if TYPE_CHECKING:
    from PIL import Image

    from .api import Index, ItemRow
    from .search import Hit

__all__ = ["create_app", "is_loopback", "LOOPBACK_HOSTS", "DEFAULT_MAX_UPLOAD_BYTES"]

WEB_DIR = Path(__file__).resolve().parent / "web"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000  # ~120 MB of RGB once decoded; phones shoot 12-50 MP
MAX_K = 500
T = TypeVar("T")
Target = Literal["image", "text", "all"]


# -- response and request models (they are the OpenAPI docs) -------------------------


class HitOut(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity to the query")
    id: int
    kind: Literal["image", "text"]
    path: str | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None
    name: str | None = Field(None, description="file name (images)")
    thumbnail: str | None = Field(None, description="URL of a JPEG thumbnail (images)")
    original: str | None = Field(None, description="URL of the original file (images)")


class SearchOut(BaseModel):
    hits: list[HitOut]
    k: int
    took_ms: float


class ItemOut(BaseModel):
    id: int
    kind: Literal["image", "text"]
    path: str | None = None
    text: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    width: int | None = None
    height: int | None = None
    status: str
    error: str | None = None
    meta: dict[str, Any] | None = None
    thumbnail: str | None = None
    original: str | None = None


class ErrorOut(BaseModel):
    status: int
    error: str
    message: str


class TermIn(BaseModel):
    """One query term: a text, or an indexed item (its stored vector); a negative weight pushes away."""

    text: str | None = Field(None, max_length=2000)
    item: int | None = Field(None, description="id of an indexed item: 'more like this item'")
    weight: float = Field(1.0, ge=-10, le=10)

    @model_validator(mode="after")
    def _one_kind(self) -> "TermIn":
        if (self.text is None) == (self.item is None):
            raise ValueError("a term has either 'text' or 'item'")
        return self


class SearchIn(BaseModel):
    """A combined query: the weighted sum of its terms (see ``Index.search``)."""

    terms: list[TermIn] = Field(min_length=1, max_length=32)
    k: int = Field(10, ge=1, le=MAX_K)
    target: Target = "image"
    min_score: float | None = Field(None, ge=-1, le=1)
    under: str | None = None
    glob: str | None = None
    types: list[str] = Field(default_factory=list, max_length=32)
    after: str | None = None
    before: str | None = None
    dedup: float | None = Field(None, ge=0, le=1)


def _query_filters(
    target: Annotated[Target, Query(description="what to return; 'text' gives image->text")] = "image",
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    under: Annotated[str | None, Query(description="only files under this folder")] = None,
    glob: Annotated[str | None, Query(description="only files whose path or name matches")] = None,
    types: Annotated[str | None, Query(description="comma-separated extensions, e.g. jpg,png")] = None,
    after: Annotated[str | None, Query(description="modified on/after YYYY-MM-DD")] = None,
    before: Annotated[str | None, Query(description="modified before YYYY-MM-DD")] = None,
) -> Filters:
    return Filters.parse(target=target, min_score=min_score, under=under, glob=glob, types=types, after=after,
                         before=before)


def _form_filters(
    target: Annotated[Target, Form()] = "image",
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    under: Annotated[str | None, Form()] = None,
    glob: Annotated[str | None, Form()] = None,
    types: Annotated[str | None, Form()] = None,
    after: Annotated[str | None, Form()] = None,
    before: Annotated[str | None, Form()] = None,
) -> Filters:
    return Filters.parse(target=target, min_score=min_score, under=under, glob=glob, types=types, after=after,
                         before=before)


def _hit_out(hit: "Hit") -> dict[str, Any]:
    data = hit.as_dict()
    if hit.kind == "image" and hit.path is not None:
        data.update(name=os.path.basename(hit.path), thumbnail=f"/api/items/{hit.id}/thumbnail",
                    original=f"/api/items/{hit.id}/original")
    return data


def _item_out(row: "ItemRow") -> dict[str, Any]:
    import json

    data = {f: getattr(row, f) for f in ItemOut.model_fields if hasattr(row, f) and f != "meta"}
    data["meta"] = json.loads(row.meta) if row.meta else None
    if row.kind == "image" and row.status == "ok":
        data.update(thumbnail=f"/api/items/{row.id}/thumbnail", original=f"/api/items/{row.id}/original")
    return data


# -- the app ----------------------------------------------------------------------------


class _IndexThread:
    """Runs callables on the one thread that owns the served index (see module docstring)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-index")

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def create_app(
    index: "Index",
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
) -> FastAPI:
    """The web page + JSON API over ``index``.

    The model is loaded now (once). ``token``: required by every ``/api`` route
    but health (``Authorization: Bearer TOKEN`` or the ``mmsearch_token``
    cookie the page sets). ``allowed_hosts``: accepted ``Host`` header names
    (None: any). Request bodies over ``max_upload_bytes`` get 413.
    """
    from .api import open_index

    encoder = index.encoder  # load the model once, before the first request
    thread = _IndexThread()
    # The server's own Index, opened on the index thread, so its sqlite connection lives there.
    served: "Index" = thread.run(open_index, index.path.name, root=index.path.parent, encoder=encoder)
    thread.run(served.info)  # opens the connection now: a broken index fails at startup, not later

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        thread.run(served.close)
        thread.shutdown()

    app = FastAPI(
        title="mmsearch", version=_version(), lifespan=lifespan,
        description="Search an mmsearch index by text, by image, or both. The web page is at `/`.",
        responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut},
                   422: {"model": ErrorOut}, 500: {"model": ErrorOut}},
    )
    app.state.index = served
    app.add_middleware(
        RequestGuard, max_body=max_upload_bytes,
        allowed_hosts=None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts},
    )
    install_error_handlers(app)

    api = APIRouter(prefix="/api", dependencies=[Depends(token_checker(token))])

    async def rows_of(item_id: int) -> "ItemRow":
        row = await thread(served.item, item_id)
        if row is None:
            raise ApiError(404, "not_found", f"no item with id {item_id}")
        return row

    async def image_file(item_id: int) -> "ItemRow":
        row = await rows_of(item_id)
        if row.kind != "image" or row.path is None:
            raise ApiError(404, "not_found", f"item {item_id} is a text, it has no image")
        if row.status != "ok":
            raise ApiError(404, "not_found", f"item {item_id} could not be indexed: {row.error}")
        if not os.path.isfile(row.path):
            raise ApiError(404, "not_found", f"the file of item {item_id} is gone: {row.path}")
        return row

    def searched(hits: list["Hit"], k: int, started: float) -> dict[str, Any]:
        return {"hits": [_hit_out(h) for h in hits], "k": k, "took_ms": round((time.perf_counter() - started) * 1e3, 2)}

    @app.get("/api/health", tags=["server"], summary="Liveness: the server answers (no token needed)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/info", tags=["server"], summary="The index: model, counts, size; and the server's limits")
    async def info() -> dict[str, Any]:
        data = (await thread(served.info)).as_dict()
        data["limits"] = {"max_upload_bytes": max_upload_bytes, "max_upload_pixels": max_upload_pixels,
                          "max_k": MAX_K, "thumbnail_sizes": list(THUMB_SIZES)}
        data["auth"] = token is not None
        return data

    @api.get("/search", response_model=SearchOut, response_model_exclude_none=True, tags=["search"],
             summary="Text search (text -> images or texts)")
    async def search_text(
        q: Annotated[str, Query(min_length=1, max_length=2000, description="what to look for, in words")],
        filters: Annotated[Filters, Depends(_query_filters)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Query(ge=0, le=1, description="drop hits this similar to a better hit")] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        hits = await thread(served.search, [QueryTerm.text(q)], k, filters=filters, dedup=dedup)
        return searched(hits, k, started)

    @api.post("/search", response_model=SearchOut, response_model_exclude_none=True, tags=["search"],
              summary="Combined query: weighted texts and indexed items, negatives push away")
    async def search_combined(body: SearchIn) -> dict[str, Any]:
        started = time.perf_counter()
        filters = Filters.parse(target=body.target, min_score=body.min_score, under=body.under, glob=body.glob,
                                types=body.types, after=body.after, before=body.before)
        terms = [QueryTerm.text(t.text, t.weight) if t.text is not None else QueryTerm.item(t.item, t.weight)
                 for t in body.terms]  # type: ignore[arg-type]
        hits = await thread(served.search, terms, body.k, filters=filters, dedup=body.dedup)
        return searched(hits, body.k, started)

    @api.post("/search/image", response_model=SearchOut, response_model_exclude_none=True, tags=["search"],
              summary="Search by an uploaded image, optionally with text terms ('WEIGHT:text')")
    async def search_image(
        image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, WebP, HEIC ...)")],
        filters: Annotated[Filters, Depends(_form_filters)],
        text: Annotated[list[str], Form(description="[WEIGHT:]TEXT terms to add, e.g. '2:red'")] = [],  # noqa: B006
        not_text: Annotated[list[str], Form(description="[WEIGHT:]TEXT terms to push away from")] = [],  # noqa: B006
        image_weight: Annotated[float, Form(ge=-10, le=10)] = 1.0,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Form(ge=0, le=1)] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        picture = await _read_upload(image, max_upload_bytes, max_upload_pixels)
        terms = [QueryTerm.image(picture, image_weight), *parse_terms(texts=text, not_texts=not_text)]
        hits = await thread(served.search, terms, k, filters=filters, dedup=dedup)
        return searched(hits, k, started)

    @api.get("/items/{item_id}/similar", response_model=SearchOut, response_model_exclude_none=True, tags=["items"],
             summary="More like this: neighbours of an indexed item (no model run)")
    async def similar(
        item_id: int, filters: Annotated[Filters, Depends(_query_filters)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        dedup: Annotated[float | None, Query(ge=0, le=1)] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        await rows_of(item_id)
        hits = await thread(served.similar, item_id, k, filters=filters, dedup=dedup)
        return searched(hits, k, started)

    @api.get("/items/{item_id}", response_model=ItemOut, response_model_exclude_none=True, tags=["items"],
             summary="One item's metadata")
    async def item(item_id: int) -> dict[str, Any]:
        return _item_out(await rows_of(item_id))

    @api.get("/items/{item_id}/thumbnail", tags=["items"], response_class=FileResponse,
             summary="JPEG thumbnail of an indexed image (made once, cached, orientation applied)")
    async def thumbnail(
        item_id: int,
        size: Annotated[int, Query(description=f"longest side: one of {THUMB_SIZES}")] = DEFAULT_THUMB_SIZE,
    ) -> FileResponse:
        if size not in THUMB_SIZES:
            raise ApiError(422, "invalid_size", f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        row = await image_file(item_id)
        try:
            path = await run_in_threadpool(served.thumbnail, row, size)
        except ImageDecodeError as exc:
            raise ApiError(404, "not_found", f"item {item_id}: {exc}") from None
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @api.get("/items/{item_id}/original", tags=["items"], response_class=FileResponse,
             summary="The original image file of an indexed item (by id only)")
    async def original(item_id: int) -> FileResponse:
        row = await image_file(item_id)
        assert row.path is not None
        media_type = mimetypes.guess_type(row.path)[0] or "application/octet-stream"
        return FileResponse(
            row.path, media_type=media_type, filename=os.path.basename(row.path), content_disposition_type="inline",
            headers={"Cache-Control": "private, max-age=3600",
                     "Content-Security-Policy": "default-src 'none'; sandbox"},
        )

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


async def _read_upload(upload: UploadFile, max_bytes: int, max_pixels: int) -> "Image.Image":
    """The uploaded image, decoded (orientation applied); 413/415 when too big or not an image."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"the upload is larger than {max_bytes} bytes")
    try:
        return await run_in_threadpool(read_query_image, data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(415, "not_an_image", str(exc)) from None


def _version() -> str:
    from . import __version__

    return __version__
