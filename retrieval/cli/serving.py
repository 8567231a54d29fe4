"""``mmsearch serve``: the web page and JSON API of one index (see :mod:`retrieval.server`).

FastAPI and uvicorn are imported inside the command, so the rest of the CLI
starts without them.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from ..errors import MMSearchError
from .options import DeviceOpt, IndexDirOpt, IndexOpt

TOKEN_ENV = "MMSEARCH_TOKEN"


def serve(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on. Anything but localhost needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token", envvar=TOKEN_ENV, show_envvar=True,
            help="Access token every API call must carry (Authorization: Bearer TOKEN). Required off localhost.",
        ),
    ] = None,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-host", help="Extra Host name accepted on localhost, e.g. behind a reverse proxy (repeatable)."
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest request body (image upload) in MiB.")] = 20.0,
    device: DeviceOpt = "auto",
) -> None:
    """Serve a search page and a JSON API for an index (http://127.0.0.1:8000/ by default).

    \b
    mmsearch serve                                  # this machine only
    mmsearch serve --host 0.0.0.0 --token SECRET    # the network, with a token
    """
    from ..server import LOOPBACK_HOSTS, is_loopback

    token = token or None
    local = is_loopback(host)
    if not local and token is None:
        raise MMSearchError(
            f"refusing to serve on {host} without a token: anyone on the network could read your pictures. "
            f"Give --token TOKEN (or set {TOKEN_ENV}), or serve on 127.0.0.1 only"
        )
    if token is not None and len(token) < 8:
        raise MMSearchError("the token is too short: use at least 8 characters (e.g. from 'openssl rand -hex 16')")

    import uvicorn

    from ..api import open_index
    from ..server import create_app

    # On localhost, only Host names that point here are answered (a web page elsewhere
    # cannot reach the server through DNS rebinding); with a token, any name is fine.
    allowed = None if not local else [*LOOPBACK_HOSTS, host, *(allow_host or [])]
    with open_index(index_name, root=index_dir, device=device) as idx:
        typer.echo(f"loading the model of index {index_name!r} ({idx.model}) ...", err=True)
        app = create_app(idx, token=token, allowed_hosts=allowed, max_upload_bytes=int(max_upload_mb * 1024 * 1024))
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"serving index {index_name!r} on http://{shown}:{port}/  (API reference: /static/api.html, "
            f"OpenAPI: /openapi.json{', token required' if token else ''}); Ctrl+C stops",
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, limit_concurrency=128)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``mmsearch`` command line."""
    app.command("serve")(serve)
