"""clip-retrieval's back-end protocol over mmsearch indexes, so its ``ClipClient`` and its web front work here.

The protocol is learned from clip-retrieval 2.45's own code (``clip_back.py``,
``clip_client.py`` and the front's bundled ``clip-service.js``), not from its
README, which differs from the code:

- ``POST /knn-service``: the raw body is JSON whatever the Content-Type (the
  client sends none, the front sends ``text/plain``). One query: ``text``,
  ``image`` (base64 of the file), ``image_url`` or ``embedding_input``, in that
  order of precedence; ``modality`` (``image``/``text``: which items),
  ``num_result_ids`` (how many ids), ``num_images`` (how many of them carry
  metadata), ``indice_name`` (null or "" = the default index), ``deduplicate``.
  The safety, violence, aesthetic and M-CLIP fields are accepted and ignored,
  numbers or strings alike. The reply is ``[{"id", "similarity", "url"?,
  "caption"?, "image_path"?}]``, best first.
- ``POST /metadata`` ``{"ids", "indice_name"}`` -> ``[{"id", "metadata": {...}}]``,
  one entry per id, in order (``{}`` for an id that is not there).
- ``GET /indices-list`` (the default index first: the front picks the first),
  ``GET /config.json`` (what the front reads at start).
- ``//knn-service`` etc. answer too: clip-retrieval's own front server hands out
  a backend URL with a trailing slash, and the front appends ``/knn-service``.

``url`` is an absolute link to this server's JPEG thumbnail of the item (every
format, HEIC included, becomes something a browser shows); ``/original`` gives
the file itself. Both are served under the server's one rule for files: only
while the file is still the one that was indexed (``Index.open_original``). An ``image_url`` that points back at this server is answered
from the item's stored vector (no download, no model run; an item of an index
with another model is embedded from its file); a foreign one is
refused unless the server was told to fetch URLs (a server that fetches what
a client names can be pointed at the private network).

Every route answers from the Python API of :class:`retrieval.api.Index`, each
call that touches a store on the server's index thread (``run``), behind the
same token dependency, Host guard, Origin rule and JSON errors as the rest of
the server (:mod:`retrieval.server_guard`: the token may also come as the
password of Basic auth, which is what ``ClipClient`` can send; CORS for the
front served from another origin is the server's ``--allow-origin``). Uploaded
pictures are decoded in the server's bounded pool (:mod:`retrieval.server_files`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from .errors import ImageDecodeError, MMSearchError
from .query import QueryTerm
from .search import Filters
from .server_files import DecodePool, stream_file
from .server_guard import ApiError, is_loopback

if TYPE_CHECKING:
    import numpy as np

    from .api import Index, ItemRow
    from .search import Hit

__all__ = [
    "clip_retrieval_router",
    "parse_knn_request",
    "KnnRequest",
    "DEDUP_THRESHOLD",
]

# clip_back drops a result whose embedding has cosine >= 0.94 to a better one ("near duplicate").
DEDUP_THRESHOLD = 0.94
DEFAULT_NUM_IMAGES = 40  # ClipClient's default
DEFAULT_MAX_K = 500  # the front asks for 3,000 ids; a personal index rarely has more worth scrolling
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
URL_THUMB_SIZE = 512  # one of THUMB_SIZES: big enough for training scripts that download ``url``, small for the front
URL_FETCH_TIMEOUT_S = 10.0

IndexRunner = Callable[..., Awaitable[Any]]
"""``await run(fn, *args, **kwargs)`` runs ``fn`` on the thread that owns the indexes (server._IndexThread)."""

_OWN_IMAGE_PATH = re.compile(r"^/+clip-retrieval/(?:images|originals)/(?P<name>[^/]+)/(?P<id>[0-9]+)(?:\.jpg)?$")
_API_IMAGE_PATH = re.compile(r"^/+api/items/(?P<id>[0-9]+)/(?:thumbnail|original)$")
_CAPTION_KEYS = ("caption", "description", "title", "text")


# -- what the OpenAPI schema says (the bodies themselves are parsed by hand, as clip_back does) ----------


class KnnIn(BaseModel):
    """A ``/knn-service`` query, as ``ClipClient`` and the front send it (any Content-Type)."""

    text: str | None = None
    image: str | None = Field(None, description="base64 of an image file")
    image_url: str | None = Field(None, description="an image on this server (or elsewhere, with --fetch-urls)")
    embedding_input: list[float] | None = Field(None, description="a vector of the index's dimension")
    modality: str | None = Field("image", description="image or text: which items to return")
    num_images: int | str | None = Field(DEFAULT_NUM_IMAGES, description="how many results carry metadata")
    num_result_ids: int | str | None = Field(DEFAULT_NUM_IMAGES, description="how many results")
    indice_name: str | None = Field(None, description="the index; null or '' for the default")
    deduplicate: bool | str | None = False
    use_safety_model: bool | str | None = Field(None, description="accepted and ignored")
    use_violence_detector: bool | str | None = Field(None, description="accepted and ignored")
    use_mclip: bool | str | None = Field(None, description="accepted and ignored")
    aesthetic_score: int | float | str | None = Field(None, description="accepted and ignored")
    aesthetic_weight: int | float | str | None = Field(None, description="accepted and ignored")


class KnnHit(BaseModel):
    id: int
    similarity: float
    url: str | None = Field(None, description="a JPEG of the item on this server (images), or the caption's url")
    caption: str | None = None
    image_path: str | None = Field(None, description="the file on the server's disk")


class MetadataIn(BaseModel):
    ids: list[int]
    indice_name: str | None = None


class MetadataOut(BaseModel):
    id: int
    metadata: dict[str, Any]


class ConfigOut(BaseModel):
    defaultBackend: str  # noqa: N815 - the front's own names
    defaultIndex: str  # noqa: N815
    urlColumn: str  # noqa: N815


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """A request body for the OpenAPI schema (the route reads the raw body itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _reply_doc(schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _list_of(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": model.model_json_schema()}


# -- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KnnRequest:
    """One ``/knn-service`` query, parsed and checked (see the module docstring for the fields)."""

    text: str | None = None
    image: bytes | None = None
    image_url: str | None = None
    embedding: tuple[float, ...] | None = None
    modality: str = "image"
    num_images: int = DEFAULT_NUM_IMAGES
    num_result_ids: int = DEFAULT_NUM_IMAGES
    indice_name: str | None = None
    deduplicate: bool = False


def parse_knn_request(body: bytes, *, max_embedding_dim: int = 65_536) -> KnnRequest:
    """Parse a ``/knn-service`` body (JSON, any Content-Type) as clip_back does; ``ApiError(400)`` if unusable."""
    data = _json_object(body)
    text = _optional_str(data, "text")
    image_b64 = _optional_str(data, "image")
    image_url = _optional_str(data, "image_url")
    embedding = data.get("embedding_input")
    image = _decode_base64(image_b64) if image_b64 else None
    vector: tuple[float, ...] | None = None
    if embedding is not None and not (text or image or image_url):
        vector = _vector(embedding, max_embedding_dim)
    if not (text or image or image_url or vector):
        raise ApiError(400, "invalid_query", "give one of text, image (base64), image_url or embedding_input")
    modality = data.get("modality") or "image"
    if modality not in ("image", "text"):
        raise ApiError(400, "invalid_query", f"modality must be 'image' or 'text', not {modality!r}")
    num_images = _count(data.get("num_images"), "num_images", DEFAULT_NUM_IMAGES, minimum=0)
    num_result_ids = _count(data.get("num_result_ids"), "num_result_ids", max(num_images, 1), minimum=1)
    indice = data.get("indice_name")
    if indice is not None and not isinstance(indice, str):
        raise ApiError(400, "invalid_query", "indice_name must be a string or null")
    return KnnRequest(
        text=text or None, image=image, image_url=None if (text or image) else image_url, embedding=vector,
        modality=modality, num_images=num_images, num_result_ids=num_result_ids, indice_name=indice or None,
        deduplicate=_flag(data.get("deduplicate"), "deduplicate"),
    )


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise ApiError(400, "invalid_request", "the request body is empty: send a JSON object")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_request", f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return data


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_query", f"{key} must be a string")
    return value


def _decode_base64(value: str) -> bytes:
    # The front strips the data-URL prefix itself; other callers may not.
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_query", "image must be the base64 of an image file") from None


def _vector(value: Any, max_dim: int) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or len(value) > max_dim:
        raise ApiError(400, "invalid_query", "embedding_input must be a non-empty list of numbers")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
        raise ApiError(400, "invalid_query", "embedding_input must hold numbers only")
    out = tuple(float(x) for x in value)
    if not all(math.isfinite(x) for x in out):
        raise ApiError(400, "invalid_query", "embedding_input holds a non-finite number")
    return out


def _count(value: Any, key: str, default: int, *, minimum: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or (isinstance(value, float) and value != number):
        raise ApiError(400, "invalid_query", f"{key} must be a whole number >= {minimum}")
    return number


def _flag(value: Any, key: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int):
        return bool(value)
    raise ApiError(400, "invalid_query", f"{key} must be true or false")


# -- the routes --------------------------------------------------------------------------------


def clip_retrieval_router(
    indexes: Mapping[str, "Index"],
    *,
    run: IndexRunner,
    require_token: Callable[..., Any] | None = None,
    default_index: str | None = None,
    max_k: int = DEFAULT_MAX_K,
    fetch_urls: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    public_url: str | None = None,
    decoder: DecodePool | None = None,
) -> APIRouter:
    """The clip-retrieval back end over ``indexes`` (name -> an open ``Index``).

    ``run`` runs a callable on the thread that opened the indexes (their sqlite
    connections live there); ``require_token`` is the server's token dependency,
    applied to every route. ``default_index`` answers ``indice_name: null``
    (default: the first). Results are capped at ``max_k``. ``fetch_urls`` lets
    ``image_url`` name other servers' images (off by default). ``public_url``
    (e.g. ``https://photos.example``) is the base of the links in replies when a
    proxy hides it; by default it is the base URL the client used. ``decoder``
    is the server's pool for uploaded pictures (default: a pool of its own).
    """
    if not indexes:
        raise MMSearchError("the clip-retrieval back end needs at least one index")
    names = list(indexes)
    default = default_index or names[0]
    if default not in indexes:
        raise MMSearchError(f"default index {default!r} is not among the served indexes ({', '.join(names)})")
    names = [default] + [n for n in names if n != default]
    if max_k < 1:
        raise MMSearchError(f"max_k must be at least 1 (got {max_k})")
    pictures = decoder or DecodePool()
    public = public_url.rstrip("/") if public_url else None
    router = APIRouter(dependencies=[Depends(require_token)] if require_token else [], tags=["clip-retrieval"])

    def base_of(request: Request) -> str:
        return public or str(request.base_url).rstrip("/")

    def index_named(name: str | None) -> tuple[str, "Index"]:
        name = name or default
        index = indexes.get(name)
        if index is None:
            raise ApiError(404, "index_not_found", f"no index named {name!r} here; served: {', '.join(names)}")
        return name, index

    async def knn_service(request: Request) -> JSONResponse:
        query = parse_knn_request(await request.body())
        name, index = index_named(query.indice_name)
        k = min(query.num_result_ids, max_k)
        filters = Filters(target=query.modality)  # type: ignore[arg-type]
        dedup = DEDUP_THRESHOLD if query.deduplicate else None
        if query.text:
            hits = await run(lambda: index.search_vector(index.embed_text(query.text), k, filters=filters, dedup=dedup))
        elif query.image is not None:
            vector = await embed(query.image, index)
            hits = await run(index.search_vector, vector, k, filters=filters, dedup=dedup)
        elif query.image_url:
            hits = await search_url(request, query.image_url, name, index, k, filters, dedup)
        else:
            assert query.embedding is not None
            hits = await run(index.search_vector, _as_array(query.embedding), k, filters=filters, dedup=dedup)
        base = base_of(request)
        rows = []
        for position, hit in enumerate(hits):
            with_metadata = position < query.num_images
            row = _metadata_of(hit.kind, hit.frame or hit.id, hit.path, hit.text, hit.meta, base, name,
                               moment=hit.time) if with_metadata else {}
            row.update(id=hit.id, similarity=float(hit.score))
            rows.append(row)
        return JSONResponse(rows)

    async def search_url(
        request: Request, url: str, name: str, index: "Index", k: int, filters: Filters, dedup: float | None
    ) -> list["Hit"]:
        own = _own_item(url, request, public, default)
        if own is not None:
            own_name, item_id = own
            _, own_index = index_named(own_name)
            row = await run(own_index.item, item_id)
            if row is None or row.kind != "image":
                raise ApiError(404, "not_found", f"no indexed image with id {item_id} in index {own_name!r}")
            if await run(_same_model, own_index, index):  # its stored vector is in this index's space: no model run
                term = QueryTerm.item(item_id)
                return await run(lambda: index.search_vector(own_index.embed_terms([term]), k, filters=filters,
                                                             dedup=dedup))
            # An image of another index, whose model differs: embed its file (checked, as any served file)
            # with this index's model.
            source, _ = await run_in_threadpool(own_index.open_original, row)
            with source:
                vector = await embed(source, index)
            return await run(index.search_vector, vector, k, filters=filters, dedup=dedup)
        if not fetch_urls:
            raise ApiError(
                403, "url_refused",
                "this server does not fetch images from other servers (start it with URL fetching allowed, "
                "or send the image itself in 'image' as base64)",
            )
        data = await run_in_threadpool(_fetch, url, max_image_bytes)
        vector = await embed(data, index)
        return await run(index.search_vector, vector, k, filters=filters, dedup=dedup)

    async def embed(data: "bytes | BinaryIO", index: "Index") -> "np.ndarray":
        """A picture's vector, decoded as ``Index.embed_image`` decodes a query file (reduced JPEG decode to the
        model's side), on the server's bounded pool (the image tower does not hold up the index thread)."""
        side = await run(_image_side, index)
        _, vector = await pictures.decode_and_embed(data, index.embed_image, min_side=side,
                                                    max_pixels=max_image_pixels, error_status=422)
        return vector

    async def metadata(request: Request) -> JSONResponse:
        data = _json_object(await request.body())
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(_is_id(i) for i in ids):
            raise ApiError(400, "invalid_request", "ids must be a list of item ids (whole numbers)")
        if len(ids) > max_k:
            raise ApiError(400, "invalid_request", f"at most {max_k} ids per request")
        indice = data.get("indice_name")
        name, index = index_named(indice if isinstance(indice, str) else None)
        found = await run(index.items, ids) if ids else {}
        base = base_of(request)
        out = []
        for item_id in ids:
            row = found.get(item_id)
            meta = _meta(row.meta) if row is not None else None
            usable = row is not None and row.status == "ok"
            out.append({"id": item_id, "metadata": _metadata_of(row.kind, row.id, row.path, row.text, meta, base, name)
                        if usable else {}})
        return JSONResponse(out)

    async def indices_list() -> list[str]:
        return names

    async def config_json(request: Request) -> dict[str, str]:
        # No trailing slash: the front appends "/knn-service" itself.
        return {"defaultBackend": base_of(request), "defaultIndex": default, "urlColumn": "url"}

    async def image_row(name: str, item_id: int) -> tuple["Index", "ItemRow"]:
        _, index = index_named(name)
        row = await run(index.item, item_id) if _is_id(item_id) else None
        if row is None or row.kind not in _PICTURES:
            raise ApiError(404, "not_found", f"no image with id {item_id} in index {name!r}")
        return index, row

    async def thumbnail(indice_name: str, item_id: int) -> FileResponse:
        index, row = await image_row(indice_name, item_id)
        try:  # the web page's thumbnail, at its largest size: made once for both
            path = await run_in_threadpool(index.thumbnail, row, URL_THUMB_SIZE)
        except ImageDecodeError as exc:
            raise ApiError(404, "not_found", f"item {item_id}: {exc}") from None
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    async def original(indice_name: str, item_id: int) -> StreamingResponse:
        index, row = await image_row(indice_name, item_id)
        source, row = await run_in_threadpool(index.open_original, row)
        assert row.path is not None
        return stream_file(source, row.path)

    for prefix in ("", "/"):  # "//knn-service": a backend URL given with a trailing slash
        shown = prefix == ""
        router.add_api_route(prefix + "/knn-service", knn_service, methods=["POST"], include_in_schema=shown,
                             summary="clip-retrieval: nearest items to a text, image, image URL or embedding",
                             openapi_extra=_body_doc(KnnIn),
                             responses=_reply_doc(_list_of(KnnHit), "the nearest items, best first"))
        router.add_api_route(prefix + "/metadata", metadata, methods=["POST"], include_in_schema=shown,
                             summary="clip-retrieval: metadata of items by id", openapi_extra=_body_doc(MetadataIn),
                             responses=_reply_doc(_list_of(MetadataOut), "one entry per id, in order"))
        router.add_api_route(prefix + "/indices-list", indices_list, methods=["GET"], include_in_schema=shown,
                             summary="clip-retrieval: the served index names, the default first",
                             responses=_reply_doc({"type": "array", "items": {"type": "string"}}, "index names"))
    router.add_api_route("/config.json", config_json, methods=["GET"],
                         summary="clip-retrieval front: default backend (this server) and index",
                         responses=_reply_doc(ConfigOut.model_json_schema(), "what the front reads at start"))
    router.add_api_route("/clip-retrieval/images/{indice_name}/{item_id}.jpg", thumbnail, methods=["GET"],
                         response_class=FileResponse, summary=f"JPEG thumbnail ({URL_THUMB_SIZE} px) of an item",
                         responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG"}})
    router.add_api_route("/clip-retrieval/originals/{indice_name}/{item_id}", original, methods=["GET"],
                         response_class=StreamingResponse, summary="The original file of an item",
                         responses={200: {"content": {"image/*": {}, "application/octet-stream": {}},
                                          "description": "the file as it was indexed"}})
    return router


_PICTURES = ("image", "video", "frame")  # what has a picture to show (a video's: its moment's frame)


def _metadata_of(
    kind: str, item_id: int, path: str | None, text: str | None, meta: Mapping[str, Any] | None, base: str,
    index_name: str, moment: float | None = None,
) -> dict[str, Any]:
    """clip-retrieval's metadata columns for one item: url, caption, image_path (for a video, the moment too).

    ``item_id`` is the item whose picture ``url`` shows: for a video hit, the frame of its best moment.
    """
    out: dict[str, Any] = {}
    if kind in _PICTURES:
        if moment is not None:
            out["time"] = round(float(moment), 3)
        out["url"] = f"{base}/clip-retrieval/images/{urllib.parse.quote(index_name, safe='')}/{item_id}.jpg"
        caption = next((meta[k] for k in _CAPTION_KEYS if meta and isinstance(meta.get(k), str) and meta[k]), None)
        if caption:
            out["caption"] = caption
        if path:
            out["image_path"] = path
    else:
        out["caption"] = text or ""
        # A caption file (CSV/JSONL) with a url column: the LAION shape, so the front can show the picture.
        url = (meta or {}).get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            out["url"] = url
    return out


def _own_item(url: str, request: Request, public: str | None, default: str) -> tuple[str, int] | None:
    """(index name, item id) when ``url`` is one of this server's image links, else None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ApiError(400, "invalid_query", f"image_url is not a URL: {url[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "invalid_query", "image_url must be an http(s) URL")
    wanted = _host_port(parts.hostname, port, parts.scheme)
    candidates = {_host_port(request.url.hostname or "", request.url.port, request.url.scheme)}
    if public:
        p = urllib.parse.urlsplit(public)
        candidates.add(_host_port(p.hostname or "", p.port, p.scheme))
    own = wanted in candidates or (
        is_loopback(wanted[0]) and any(is_loopback(h) and port_ == wanted[1] for h, port_ in candidates)
    )
    if not own:
        return None
    path = urllib.parse.unquote(parts.path)
    if public:
        prefix = urllib.parse.urlsplit(public).path.rstrip("/")
        path = path[len(prefix):] if prefix and path.startswith(prefix) else path
    match = _OWN_IMAGE_PATH.match(path)
    if match and _is_id(int(match["id"])):
        return match["name"], int(match["id"])
    match = _API_IMAGE_PATH.match(path)
    if match and _is_id(int(match["id"])):  # a link from the web page / JSON API, which serves the default index
        return default, int(match["id"])
    raise ApiError(400, "invalid_query", f"image_url points at this server but not at an indexed image: {parts.path}")


def _is_id(value: Any) -> bool:
    """An item id sqlite can look up (a whole number within 64 bits)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _host_port(host: str, port: int | None, scheme: str) -> tuple[str, int]:
    return host.strip("[]").lower(), port or (443 if scheme == "https" else 80)


def _image_side(index: "Index") -> int | None:
    """The model's input side (on the index thread: the first use of ``encoder`` may load the model)."""
    return int(getattr(index.encoder, "image_size", 0)) or None


def _fetch(url: str, max_bytes: int) -> bytes:
    """Download an image (http/https only, size-capped, with a timeout); ApiError(422) with the reason."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "mmsearch (clip-retrieval back end)"})
    try:
        with urllib.request.urlopen(request, timeout=URL_FETCH_TIMEOUT_S) as response:  # noqa: S310 - scheme checked
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(422, "url_unreadable", f"could not fetch image_url: {exc}") from None
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"the image at image_url is larger than {max_bytes} bytes")
    return data


def _same_model(one: "Index", other: "Index") -> bool:
    """Whether two indexes' vectors live in one space (the same model fingerprint); on the index thread."""
    return one is other or one.info().fingerprint == other.info().fingerprint


def _meta(raw: str | None) -> dict[str, Any] | None:
    """An item's stored metadata, or None when there is none (or it is not a JSON object)."""
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _as_array(values: Sequence[float]) -> "np.ndarray":
    import numpy as np

    return np.asarray(values, dtype=np.float32)
