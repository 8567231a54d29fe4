"""What protects ``mmsearch serve`` and what its clients may see: one policy for every route it serves.

- ``RequestGuard`` (ASGI middleware): only the allowed Host names (no DNS
  rebinding of a localhost server); request bodies capped while they stream in
  (413); the Origin rule: a web page of another origin may not make the server
  do work (POST, PUT, PATCH, DELETE: 403) and gets no CORS headers, unless
  ``--allow-origin`` names that origin, which then may call every route; and
  security headers on every response;
- ``token_checker``: the optional access token, as a bearer header, as the
  password of HTTP Basic auth (clients that can only put credentials in a URL,
  such as clip-retrieval's ``ClipClient``) or in the cookie the page sets,
  compared in constant time; ``check_token`` refuses tokens no client could send;
- ``install_error_handlers``: library errors mapped to status codes, every
  error a JSON body ``{"status", "error", "message"}``, unexpected exceptions
  a generic 500 (the traceback goes to the server log only).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import urllib.parse
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import (
    ExplainUnsupportedError,
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
    MMSearchError,
    ModelLoadError,
    UnknownPreprocessError,
)

TOKEN_COOKIE = "mmsearch_token"
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_LENGTH = 8
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths whose responses are pictures: with --allow-origin, pages of those origins may show them in <img>.
IMAGE_PATH_PREFIXES = ("/api/items/", "/clip-retrieval/")


def is_loopback(host: str) -> bool:
    """True for names that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiError(Exception):
    """An HTTP error with a message for the client (and optional extra headers, e.g. ``Retry-After``)."""

    def __init__(self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.headers = dict(headers or {})


def status_of(exc: MMSearchError) -> tuple[int, str]:
    """The HTTP status and error name of a library error (its message is meant for users: it is sent)."""
    if isinstance(exc, ItemNotFoundError):
        return 404, "not_found"
    if isinstance(exc, InvalidQueryError):
        return 400, "invalid_query"
    if isinstance(exc, ImageDecodeError):
        return 422, "bad_image"
    if isinstance(exc, (ExplainUnsupportedError, UnknownPreprocessError)):
        return 422, "unsupported"  # this model cannot be explained that way; the message names a way that works
    if isinstance(exc, IndexNotFoundError):
        return 404, "index_not_found"
    if isinstance(exc, (ModelLoadError, IndexLockedError)):
        return 503, "unavailable"
    return 500, "index_error"


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one error shape: ``{"status", "error", "message"}`` (+ ``extra`` fields)."""
    out = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    out.update(headers or {})
    return JSONResponse({"status": status, "error": error, "message": message, **extra}, status, headers=out or None)


# -- the token ------------------------------------------------------------------------------


def check_token(token: str | None) -> str | None:
    """``token`` if a client can send it (None stays None); ``MMSearchError`` saying why not.

    Header values are trimmed and travel as ASCII, so a token with spaces at
    either end, control characters or non-ASCII letters could never be sent back
    exactly: such a token would lock everyone out (a blank one would look like
    "no token" to a hurried reader).
    """
    if token is None:
        return None
    if not token.strip():
        raise MMSearchError("the token is blank: give at least 8 characters (e.g. from 'openssl rand -hex 16')")
    if token != token.strip():
        raise MMSearchError("the token starts or ends with whitespace, which HTTP headers drop: remove it")
    if not all(32 <= ord(c) < 127 for c in token):
        raise MMSearchError("the token must be printable ASCII (letters, digits, punctuation): "
                            "e.g. from 'openssl rand -hex 16'")
    if len(token) < MIN_TOKEN_LENGTH:
        raise MMSearchError("the token is too short: use at least 8 characters (e.g. from 'openssl rand -hex 16')")
    return token


def _basic_password(auth: str) -> str | None:
    try:
        decoded = base64.b64decode(auth.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[2] or None


def token_checker(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with ``token`` (or anything, if None).

    Accepted: ``Authorization: Bearer TOKEN``; ``Authorization: Basic`` whose
    password is the token (the user name is ignored: ``requests`` makes this from
    ``http://mmsearch:TOKEN@host/``); the ``mmsearch_token`` cookie of the page.
    """
    expected = check_token(token)

    async def require_token(request: Request) -> None:  # async: no I/O, so no trip through the thread pool
        if expected is None:
            return
        supplied = None
        auth = request.headers.get("authorization", "")
        scheme = auth[:6].lower()
        if scheme == "bearer" and auth[6:7] == " ":
            supplied = auth[7:].strip()
        elif scheme == "basic ":
            supplied = _basic_password(auth[6:])
        elif TOKEN_COOKIE in request.cookies:
            supplied = urllib.parse.unquote(request.cookies[TOKEN_COOKIE])
        if not supplied or not hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8")):
            raise ApiError(401, "unauthorized", "this server needs a token: send 'Authorization: Bearer TOKEN'"
                           " (or enter it on the web page)")

    return require_token


# -- errors -----------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"status", "error", "message"}`` with its status code; never a traceback."""
    @app.exception_handler(ApiError)
    async def apierror_response(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message, exc.headers)

    @app.exception_handler(MMSearchError)
    async def libraryerror_response(_: Request, exc: MMSearchError) -> JSONResponse:
        status, error = status_of(exc)
        return error_response(status, error, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                   for e in exc.errors()]
        message = "; ".join(f"{'.'.join(d['loc'][1:]) or 'request'}: {d['msg']}" for d in details)
        return error_response(422, "invalid_request", message or "invalid request", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"not found: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", message,
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log (uvicorn prints it), never to the client.
        return error_response(500, "internal_error", "internal server error; the server log has the details")


# -- origins ----------------------------------------------------------------------------------


def parse_origins(origins: Iterable[str]) -> frozenset[str]:
    """Origins as ``--allow-origin`` takes them (``scheme://host[:port]``, or ``*``), normalised.

    Raises ``MMSearchError`` for anything that is not an origin (a path, no scheme).
    """
    cleaned = set()
    for raw in origins:
        origin = raw.strip().rstrip("/")
        if origin != "*":
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or "@" in origin:
                raise MMSearchError(
                    f"--allow-origin {raw!r} is not an origin: give scheme://host[:port], e.g. http://127.0.0.1:1235"
                )
            origin = f"{parts.scheme}://{_netloc(parts.netloc, parts.scheme)}"
        cleaned.add(origin)
    return frozenset(cleaned)


def _netloc(netloc: str, scheme: str) -> str:
    """host[:port] in lower case, without the scheme's default port."""
    netloc = netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def _same_origin(origin: str, host: str) -> bool:
    """Whether a page at ``origin`` is this server, as its Host header names it."""
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file:// pages) and the like
    here = host.lower()
    for default in (":80", ":443"):
        here = here[: -len(default)] if here.endswith(default) else here
    return _netloc(parts.netloc, parts.scheme) == here


class RequestGuard:
    """ASGI middleware: Host check, request-body cap, the Origin rule and CORS, security headers."""

    _HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]
    # The page loads nothing from elsewhere; /docs and /redoc (FastAPI's) load Swagger UI/ReDoc from a CDN.
    _CSP = (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    def __init__(
        self, app: Any, *, max_body: int, allowed_hosts: set[str] | None, allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts
        self.allowed_origins = parse_origins(allowed_origins)

    def _origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None:
            lowered = host.lower()
            name = lowered[1 : lowered.find("]")] if lowered.startswith("[") else lowered.split(":", 1)[0]
            if name not in self.allowed_hosts:
                await send_json(send, 400, "bad_host", f"host {host!r} is not served here")
                return
        method = scope.get("method", "GET")
        origin = headers[b"origin"].decode("latin-1") if b"origin" in headers else None
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and not _same_origin(origin, host):
            if self._origin_allowed(origin):
                cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                if method == "OPTIONS" and b"access-control-request-method" in headers:
                    await self._preflight(send, cors, headers)
                    return
            elif method in STATE_CHANGING:
                await send_json(send, 403, "cross_origin",
                                f"requests from pages of another origin ({origin[:200]}) are refused: start the "
                                "server with --allow-origin ORIGIN to let that page use it")
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await send_json(send, 413, "too_large", f"the request body is larger than {self.max_body} bytes")
            return
        received = 0
        exceeded = False
        path = scope.get("path", "")
        csp = path not in ("/docs", "/redoc") and not path.startswith(IMAGE_PATH_PREFIXES)
        # Pictures may be shown by the pages --allow-origin names (an <img> request carries no Origin).
        shared = bool(self.allowed_origins) and path.startswith(IMAGE_PATH_PREFIXES)
        extra = [*self._HEADERS, (b"cross-origin-resource-policy", b"cross-origin" if shared else b"same-origin"),
                 *([self._CSP] if csp else []), *cors]

        async def capped_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # a chunked body with no Content-Length
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if exceeded:
                return  # the app's reply to the cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, capped_receive, guarded_send)
        if exceeded:
            await send_json(send, 413, "too_large", f"the request body is larger than {self.max_body} bytes")

    @staticmethod
    async def _preflight(send: Callable, cors: list[tuple[bytes, bytes]], headers: dict[bytes, bytes]) -> None:
        reply = [*cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                 (b"access-control-allow-headers", b"content-type, authorization"),
                 (b"access-control-max-age", b"600"), (b"content-length", b"0")]
        if headers.get(b"access-control-request-private-network") == b"true":
            reply.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": reply})
        await send({"type": "http.response.body", "body": b""})


async def send_json(
    send: Callable, status: int, error: str, message: str, headers: Mapping[str, str] | None = None,
) -> None:
    """Answer with the error shape straight from a middleware (before the app runs; its body is left unread)."""
    body = json.dumps({"status": status, "error": error, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"), (b"connection", b"close"),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()),
    ]})
    await send({"type": "http.response.body", "body": body})
