"""``mmsearch serve``: the web page and JSON API of an index (see :mod:`retrieval.server`).

With ``--clip-retrieval`` the same server also speaks clip-retrieval's
back-end protocol over one or more indexes; with ``--immich-ml`` it is
instead a stand-in for immich's machine-learning service (see
docs/clients.md). FastAPI and uvicorn are imported inside the command, so the
rest of the CLI starts without them.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from ..errors import MMSearchError
from .options import DeviceOpt, IndexDirOpt

TOKEN_ENV = "MMSEARCH_TOKEN"


def serve(
    index_names: Annotated[
        Optional[list[str]],
        typer.Option("--index", "-i", help="Index to serve. Repeatable with --clip-retrieval: the first one is the "
                     "web page's and the default. [default: default]"),
    ] = None,
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
    allow_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-origin",
            help="Web page origin (scheme://host[:port], or *) that may call this server from its own pages, e.g. "
            "clip-retrieval's front (repeatable). Pages of other origins may not POST here.",
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest request body (image upload) in MiB.")] = 20.0,
    device: DeviceOpt = "auto",
    clip_retrieval: Annotated[
        bool, typer.Option("--clip-retrieval", help="Also answer clip-retrieval's ClipClient and front "
                           "(/knn-service, /metadata, /indices-list, /config.json) on the same port.")
    ] = False,
    fetch_urls: Annotated[
        bool, typer.Option("--fetch-urls", help="With --clip-retrieval: let image_url name images on other "
                           "servers, which this server then downloads (off: it could be made to reach your network).")
    ] = False,
    public_url: Annotated[
        Optional[str], typer.Option("--public-url", help="With --clip-retrieval: the base URL clients reach this "
                                    "server at, when a reverse proxy hides it (e.g. https://photos.example).")
    ] = None,
    immich_ml: Annotated[
        bool, typer.Option("--immich-ml", help="Serve immich's machine-learning protocol instead (CLIP for smart "
                           "search; faces and OCR are left to immich's own service). No token: immich sends none.")
    ] = False,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="With --immich-ml: the model to serve (e.g. "
                                    "ViT-B-32:openai) [default: the --index's model].")
    ] = None,
    immich_name: Annotated[
        Optional[list[str]], typer.Option("--immich-name", help="With --immich-ml: the immich model name(s) to "
                                          "answer for [default: immich's name of the model] (repeatable).")
    ] = None,
    immich_load_any: Annotated[
        bool, typer.Option("--immich-load-any", help="With --immich-ml: load any other CLIP model immich asks "
                           "for on first use (weights are downloaded then).")
    ] = False,
) -> None:
    """Serve a search page and a JSON API for an index (http://127.0.0.1:8000/ by default).

    \b
    mmsearch serve                                  # this machine only
    mmsearch serve --host 0.0.0.0 --token SECRET    # the network, with a token
    mmsearch serve --index photos --clip-retrieval  # also clip-retrieval's protocol
    mmsearch serve --immich-ml --model ViT-B-32:openai --port 3003   # immich's ML service
    """
    from ..server_guard import LOOPBACK_HOSTS, check_token, is_loopback, parse_origins

    token = check_token(token or None)
    parse_origins(allow_origin or ())  # a mistyped origin is said before any index or model loads
    names = list(index_names or [DEFAULT_INDEX_NAME])
    local = is_loopback(host)
    max_body = int(max_upload_mb * 1024 * 1024)
    # On localhost, only Host names that point here are answered (a web page elsewhere
    # cannot reach the server through DNS rebinding); elsewhere, any name is fine.
    allowed = None if not local else [*LOOPBACK_HOSTS, host, *(allow_host or [])]
    if immich_ml:
        others = [flag for flag, on in (("--clip-retrieval", clip_retrieval), ("--fetch-urls", fetch_urls),
                                        ("--public-url", public_url), ("--allow-origin", allow_origin)) if on]
        if others:
            raise MMSearchError(f"{', '.join(others)} cannot be combined with --immich-ml (it serves immich only)")
        if token is not None:
            raise MMSearchError(
                "--immich-ml takes no token: immich cannot send one to its machine-learning service "
                f"(unset {TOKEN_ENV}, and keep the port off the internet)"
            )
        if len(names) > 1:
            raise MMSearchError("--immich-ml serves one model: give one --index, or --model")
        if not local:
            typer.echo(f"warning: immich's ML protocol has no token; anyone who can reach {host}:{port} can use "
                       "this machine's CPU/GPU through it. Keep the port off the internet.", err=True)
        app = _immich_app(model, names[0] if index_names else None, index_dir, device, immich_name or [],
                          immich_load_any, allowed, max_body)
        _run(app, host, port, f"serving immich's machine-learning protocol on {_url(host, port)}; Ctrl+C stops")
        return

    unused = [flag for flag, on in (("--model", model), ("--immich-name", immich_name),
                                    ("--immich-load-any", immich_load_any)) if on]
    if unused:
        raise MMSearchError(f"{', '.join(unused)} only apply with --immich-ml (an index is served with its own model)")
    if not clip_retrieval and (len(names) > 1 or fetch_urls or public_url):
        raise MMSearchError("several --index, --fetch-urls and --public-url need --clip-retrieval")
    if not local and token is None:
        raise MMSearchError(
            f"refusing to serve on {host} without a token: anyone on the network could read your pictures. "
            f"Give --token TOKEN (or set {TOKEN_ENV}), or serve on 127.0.0.1 only"
        )

    from ..api import open_index
    from ..server import create_app

    opened = []
    try:
        for name in names:
            opened.append(open_index(name, root=index_dir, device=device))
        main, *more = opened
        typer.echo(f"loading the model of index {names[0]!r} ({main.model}) ...", err=True)
        app = create_app(main, token=token, allowed_hosts=allowed, max_upload_bytes=max_body,
                         allow_origins=allow_origin or (), clip_retrieval=clip_retrieval, more_indexes=more,
                         fetch_urls=fetch_urls, public_url=public_url)
        extra = f"; clip-retrieval: {_url(host, port)}knn-service ({', '.join(names)})" if clip_retrieval else ""
        _run(app, host, port,
             f"serving index {names[0]!r} on {_url(host, port)}  (API reference: /static/api.html, "
             f"OpenAPI: /openapi.json{', token required' if token else ''}{extra}); Ctrl+C stops")
    finally:
        for index in opened:
            index.close()


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _run(app: Any, host: str, port: int, banner: str) -> None:
    import uvicorn

    from ..server_http import json_http_protocol

    typer.echo(banner, err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, limit_concurrency=128,
                http=json_http_protocol())


def _immich_app(
    model: str | None, index_name: str | None, index_dir: Any, device: str, names: list[str], load_any: bool,
    allowed: list[str] | None, max_body: int,
) -> Any:
    """The immich stand-in for ``--model`` (or the index's model), answering for ``names`` (or immich's name)."""
    from ..immich_ml import ImmichModels, create_immich_ml_app, load_model
    from ..immich_models import immich_names_for

    if model is not None:
        if index_name is not None:
            raise MMSearchError("give --model or --index with --immich-ml, not both")
        typer.echo(f"loading model {model} ...", err=True)
        encoder = load_model(model, device=device)
    else:
        from ..api import open_index

        with open_index(index_name or DEFAULT_INDEX_NAME, root=index_dir, device=device) as index:
            typer.echo(f"loading the model of index {index.name!r} ({index.model}) ...", err=True)
            encoder = index.encoder
    spec = str(getattr(encoder, "spec", model or ""))
    served = names or immich_names_for(spec) or immich_names_for(model or "")
    if not served:
        raise MMSearchError(
            f"immich has no name for model {spec!r}: give the name immich should use with --immich-name "
            "(e.g. --immich-name ViT-B-32__openai for a fine-tuned ViT-B-32; the vector size must match)"
        )
    registry = ImmichModels({name: encoder for name in served},
                            load=(lambda wanted: load_model(wanted, device=device)) if load_any else None)
    typer.echo(f"answering immich for {', '.join(registry.names)}", err=True)
    return create_immich_ml_app(registry, allowed_hosts=allowed, max_upload_bytes=max_body)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``mmsearch`` command line."""
    app.command("serve")(serve)
