"""What protects ``mmsearch serve`` and what its clients may see.

- ``RequestGuard`` (ASGI middleware): only the allowed Host names (no DNS
  rebinding of a localhost server), request bodies capped while they stream
  in (413), security headers on every response;
- ``token_checker``: the optional access token (bearer header or the cookie the
  page sets), compared in constant time;
- ``install_error_handlers``: library errors mapped to status codes, every
  error a JSON body ``{"status", "error", "message"}``, unexpected exceptions
  a generic 500 (the traceback goes to the server log only).
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import (
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
    MMSearchError,
    ModelLoadError,
)

TOKEN_COOKIE = "mmsearch_token"
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


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
    """An HTTP error with a message for the client."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def status_of(exc: MMSearchError) -> tuple[int, str]:
    """The HTTP status and error name of a library error (its message is meant for users: it is sent)."""
    if isinstance(exc, ItemNotFoundError):
        return 404, "not_found"
    if isinstance(exc, InvalidQueryError):
        return 400, "invalid_query"
    if isinstance(exc, ImageDecodeError):
        return 422, "bad_image"
    if isinstance(exc, IndexNotFoundError):
        return 404, "index_not_found"
    if isinstance(exc, (ModelLoadError, IndexLockedError)):
        return 503, "unavailable"
    return 500, "index_error"


def error_response(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"status": status, "error": error, "message": message, **extra}, status, headers=headers)


def token_checker(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with ``token`` (or anything, if None)."""

    def require_token(request: Request) -> None:
        if token is None:
            return
        supplied = None
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            supplied = auth[7:].strip()
        elif TOKEN_COOKIE in request.cookies:
            supplied = urllib.parse.unquote(request.cookies[TOKEN_COOKIE])
        if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "this server needs a token: send 'Authorization: Bearer TOKEN'"
                           " (or enter it on the web page)")

    return require_token


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"status", "error", "message"}`` with its status code; never a traceback."""
    @app.exception_handler(ApiError)
    async def apierror_response(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message)

    @app.exception_handler(MMSearchError)
    async def libraryerror_response(_: Request, exc: MMSearchError) -> JSONResponse:
        status, error = status_of(exc)
        return error_response(status, error, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, d['loc'][1:])) or 'request'}: {d['msg']}" for d in details)
        return error_response(422, "invalid_request", message or "invalid request", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"not found: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", message)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log (uvicorn prints it), never to the client.
        return error_response(500, "internal_error", "internal server error; the server log has the details")


class RequestGuard:
    """ASGI middleware: Host check, request-body cap, security headers on every response."""

    _HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]
    # The page loads nothing from elsewhere; /docs and /redoc (FastAPI's) load Swagger UI/ReDoc from a CDN.
    _CSP = (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    def __init__(self, app: Any, *, max_body: int, allowed_hosts: set[str] | None) -> None:
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host[1 : host.find("]")] if host.startswith("[") else host.split(":", 1)[0]
            if name not in self.allowed_hosts:
                await send_json(send, 400, "bad_host", f"host {host!r} is not served here")
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await send_json(send, 413, "too_large", f"the request body is larger than {self.max_body} bytes")
            return
        received = 0
        exceeded = False
        path = scope.get("path", "")
        csp = path not in ("/docs", "/redoc") and not path.startswith("/api/items/")

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
                extra = self._HEADERS + ([self._CSP] if csp else [])
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, capped_receive, guarded_send)
        if exceeded:
            await send_json(send, 413, "too_large", f"the request body is larger than {self.max_body} bytes")


async def send_json(send: Callable, status: int, error: str, message: str) -> None:
    body = json.dumps({"status": status, "error": error, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
