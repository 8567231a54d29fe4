"""uvicorn's own error replies in the server's JSON error shape.

A request too malformed to reach the app (a broken request line, bad header
bytes) is answered by uvicorn itself, as ``400`` with a plain-text body. Every
other error of ``mmsearch serve`` is ``{"status", "error", "message"}``, so
clients need one parser: :func:`json_http_protocol` is uvicorn's HTTP
protocol (httptools when installed, else h11) with that one reply replaced.
"""

from __future__ import annotations

import asyncio
import json

__all__ = ["json_http_protocol", "bad_request_bytes"]


def bad_request_bytes(reason: str) -> bytes:
    """A complete ``400`` HTTP/1.1 response (the connection is closed after it) with a JSON error body."""
    message = f"{reason.rstrip('.')}: the request is not valid HTTP/1.1"
    body = json.dumps({"status": 400, "error": "bad_request", "message": message}).encode()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\n" % len(body))
    return head + body


class _JsonBadRequest:
    """Mixed into a uvicorn protocol: its ``send_400_response`` writes the JSON shape, then closes."""

    transport: asyncio.Transport

    def send_400_response(self, msg: str) -> None:
        # The request was never handed to the app and the connection closes here: raw bytes
        # are all it takes, whatever state the parser is in.
        self.transport.write(bad_request_bytes(msg))
        self.transport.close()


def json_http_protocol() -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.run(http=...)``: uvicorn's default one, answering bad requests in JSON."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools is optional (uvicorn[standard]); h11 always comes with uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]
    if not hasattr(Base, "send_400_response"):  # a uvicorn that answers differently: keep its own reply
        return Base
    return type(f"Json{Base.__name__}", (_JsonBadRequest, Base), {})
