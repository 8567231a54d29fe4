"""The ``mmsearch`` command line: thin adapters over :mod:`retrieval.api`.

One module per command group (indexing, searching, explaining, inspecting, duplicates,
training, maintenance, serving, scaling), each with a ``register(app)``; option types
shared between them live in :mod:`retrieval.cli.options`. Heavy modules
(torch, open_clip, faiss) are imported inside the commands that need them, so
``mmsearch --help`` and ``mmsearch list`` start fast. Every ``MMSearchError``
becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

# Typer ships its own copy of click; its exceptions (not the click package's) are what it raises.
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from ..errors import MMSearchError, printable
from . import duplicates, explaining, indexing, inspecting, maintenance, scaling, searching, serving, training


class _Group(TyperGroup):
    """Turns library errors and usage errors into one ``error:`` line on stderr and exit code 1."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()  # 'mmsearch' alone: the help, as before
            sys.exit(0)
        except click_errors.UsageError as exc:
            # click's own form is three lines and exit 2; ours is one line and exit 1 everywhere.
            where = f"'{exc.ctx.command_path} --help'" if exc.ctx is not None else "'mmsearch --help'"
            typer.echo(f"error: {printable(exc.format_message())} (see {where})", err=True)
            sys.exit(1)
        except click_errors.ClickException as exc:
            typer.echo(f"error: {printable(exc.format_message())}", err=True)
            sys.exit(1)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MMSearchError as exc:
            typer.echo(f"error: {printable(str(exc))}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: what was committed so far is kept", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    help="mmsearch: search your images (and texts) by meaning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help texts are plain: "[WEIGHT:]FILE" and "[default: ...]" must show as written
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library diagnostics.")] = False,
) -> None:
    # open_clip and huggingface_hub log warnings a user can do nothing about
    # (e.g. "model initialized randomly" for test models); keep stderr readable.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    # The image-runtime choice says when it measures (a pause of a minute once) and when it falls back.
    for name in ("retrieval.image_choice", "retrieval.image_export"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


for _group in (indexing, searching, explaining, inspecting, duplicates, training, maintenance, serving, scaling):
    _group.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mmsearch")


__all__ = ["app", "main"]
