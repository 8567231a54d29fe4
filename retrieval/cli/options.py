"""Option types and small printers shared by the command modules.

Defined once so that a flag reads and behaves the same in every command.
Only typer is imported here: ``mmsearch --help`` stays free of torch.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..errors import printable

IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Name of the index.")]
IndexDirOpt = Annotated[
    Optional[Path],
    typer.Option("--index-dir", help="Folder holding the indexes [default: $MMSEARCH_INDEX_DIR or ./indexes]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process writes the index.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No per-file messages.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would be removed, change nothing.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Model numerics: auto (fp16 on GPUs; on CPUs the fastest measured here that keeps its accuracy "
        "floor, chosen once per machine and shown by 'mmsearch info'), fp32, bf16, fp16 (GPUs), int8 (CPU, "
        "image tower only), onnx-fp32 or onnx-int8 (CPU: image tower under ONNX Runtime). "
        "All keep cosine >= 0.995 to fp32.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", min=1, help="Torch CPU threads [default: one per available core].")
]
ExcludeOpt = Annotated[
    Optional[list[str]], typer.Option("--exclude", "-x", help="Glob of files/folders to skip (repeatable).")
]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Images (or video frames) per encoder batch.")]
NoVideoOpt = Annotated[
    bool, typer.Option("--no-video", help="Leave videos out (those already indexed stay as they are).")
]
AnnOpt = Annotated[
    Optional[str],
    typer.Option("--ann", help="ANN index: auto (by size and --max-memory), flat, hnsw, ivf or ivfpq [default: auto]."),
]
MaxMemoryOpt = Annotated[
    Optional[str], typer.Option("--max-memory", help="RAM budget of the ANN index, e.g. 512MiB, 4GiB [default: 4GiB].")
]
TargetRecallOpt = Annotated[
    Optional[float], typer.Option("--target-recall", help="recall@10 the search parameters are tuned to [default: 0.95].")
]


class Engine(str, Enum):
    """Where images are embedded: this process, or a Ray cluster (``pip install 'mmsearch[ray]'``)."""

    local = "local"
    ray = "ray"


EngineOpt = Annotated[Engine, typer.Option("--engine", help="Where to embed: local (this process) or ray (a Ray cluster).")]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray cluster to use (e.g. auto, ray://HOST:10001) [default: $RAY_ADDRESS, else a private one]."),
]
NumWorkersOpt = Annotated[
    Optional[int], typer.Option("--num-workers", min=1, help="Ray embedding actors [default: one per 2 cluster CPUs].")
]

# -- what a query returns -----------------------------------------------------------

KOpt = Annotated[int, typer.Option("-k", "--top", min=1, help="Number of results (after filtering).")]
TargetOpt = Annotated[
    Optional[str],
    typer.Option("--target", help="What to return: image (photos and videos), text or all [default: image; text for --image queries on a text-only index]."),
]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", help="Drop results scoring below this cosine.")]
UnderOpt = Annotated[Optional[str], typer.Option("--under", help="Only files under this folder.")]
GlobOpt = Annotated[Optional[str], typer.Option("--glob", help="Only files whose path or name matches this glob.")]
TypeOpt = Annotated[
    Optional[str],
    typer.Option("--type", help="Only these file types, e.g. 'jpg,png', or kinds: 'video' (videos only), 'image' (photos only)."),
]
AfterOpt = Annotated[Optional[str], typer.Option("--after", help="Only files modified on/after this date (YYYY-MM-DD).")]
BeforeOpt = Annotated[Optional[str], typer.Option("--before", help="Only files modified before this date (YYYY-MM-DD).")]
TakenAfterOpt = Annotated[
    Optional[str],
    typer.Option("--taken-after", help="Only photos taken on/after this date (YYYY, YYYY-MM, YYYY-MM-DD or "
                 "YYYY-MM-DDTHH:MM, on the photo's own clock; no date in the file: its file date)."),
]
TakenBeforeOpt = Annotated[
    Optional[str], typer.Option("--taken-before", help="Only photos taken before this date (as --taken-after).")
]
PlaceOpt = Annotated[
    Optional[str],
    typer.Option("--place", help="Only photos taken in this city, region or country, in any language "
                 "(e.g. Spain, München, 'Paris, Texas')."),
]
NearOpt = Annotated[
    Optional[str], typer.Option("--near", help="Only photos taken near this city (or LAT,LON); see --within.")
]
WithinOpt = Annotated[Optional[float], typer.Option("--within", help="Kilometres around --near [default: 25].")]
CameraOpt = Annotated[
    Optional[str], typer.Option("--camera", help="Only photos from this camera: words of its make and model (e.g. iphone).")
]
HasGpsOpt = Annotated[
    Optional[bool], typer.Option("--has-gps/--no-gps", help="Only photos with (or without) a GPS position.")
]


class SortBy(str, Enum):
    """The order of the results: by score, or the k best matches by capture time (newest first)."""

    score = "score"
    taken = "taken"


SortOpt = Annotated[
    SortBy,
    typer.Option("--sort", help="score: best match first; taken: the k best matches, newest capture first."),
]
DedupOpt = Annotated[
    Optional[float], typer.Option("--dedup", min=0.0, max=1.0, help="Drop hits this similar (cosine) to a better hit.")
]
HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained results page here.")]
PathsOpt = Annotated[bool, typer.Option("--paths", help="Only the paths (or texts), one per line.")]


@dataclass(frozen=True)
class ResultOptions:
    """What every search command takes besides its query: how many, which, and how to print them."""

    k: int
    filters: dict[str, Any]  # keyword arguments of search.Filters.parse
    dedup: float | None
    json_out: bool
    paths_only: bool
    html: Path | None
    sort: str = "score"

    @property
    def about_photos(self) -> bool:
        """Whether the user asked about capture metadata (a photo filter, or --sort taken): listings then show it."""
        return self.sort == "taken" or any(self.filters.get(name) is not None for name in _PHOTO_FILTER_NAMES)


# (name, annotation, default) of the options in ResultOptions, in --help order.
_RESULT_OPTIONS: list[tuple[str, Any, Any]] = [
    ("k", KOpt, 10), ("target", TargetOpt, None), ("min_score", MinScoreOpt, None), ("under", UnderOpt, None),
    ("glob", GlobOpt, None), ("types", TypeOpt, None), ("after", AfterOpt, None), ("before", BeforeOpt, None),
    ("taken_after", TakenAfterOpt, None), ("taken_before", TakenBeforeOpt, None), ("place", PlaceOpt, None),
    ("near", NearOpt, None), ("within", WithinOpt, None), ("camera", CameraOpt, None), ("has_gps", HasGpsOpt, None),
    ("sort", SortOpt, SortBy.score), ("dedup", DedupOpt, None), ("index_name", IndexOpt, None),
    ("index_dir", IndexDirOpt, None), ("json_out", JsonOpt, False), ("paths_only", PathsOpt, False),
    ("html", HtmlOpt, None),
]
_PHOTO_FILTER_NAMES = ("taken_after", "taken_before", "place", "near", "within", "camera", "has_gps")
_FILTER_NAMES = ("target", "min_score", "under", "glob", "types", "after", "before", *_PHOTO_FILTER_NAMES)


def with_result_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a search command the shared options (-k, the filters, --sort, --dedup, --index, output formats).

    The command declares ``results: ResultOptions`` (keyword-only, no default)
    where the options should appear in --help, and ``index_name`` / ``index_dir``
    (filled from ``--index`` / ``--index-dir``); the options are defined here once.
    """
    from ..config import DEFAULT_INDEX_NAME

    params = []
    for p in inspect.signature(command, eval_str=True).parameters.values():
        if p.name == "results":  # the shared options take its place in --help
            params += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                  default=DEFAULT_INDEX_NAME if name == "index_name" else default)
                for name, annotation, default in _RESULT_OPTIONS
            ]
        elif p.name not in ("index_name", "index_dir"):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    signature = inspect.Signature(params)

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        results = ResultOptions(
            k=values.pop("k"), filters={name: values.pop(name) for name in _FILTER_NAMES},
            dedup=values.pop("dedup"), json_out=values.pop("json_out"), paths_only=values.pop("paths_only"),
            html=values.pop("html"), sort=SortBy(values.pop("sort")).value,
        )
        command(**values, results=results)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper


# -- printers -------------------------------------------------------------------------


def out(line: str) -> None:
    """One line of results on stdout, made printable (a non-UTF-8 file name or an ESC in it is escaped)."""
    typer.echo(printable(line))


def err(message: str) -> None:
    """One line on stderr (diagnostics, progress notes; never results), made printable."""
    typer.echo(printable(message), err=True)


def echo_json(data: Any, *, compact: bool = False) -> None:
    """JSON on stdout (``compact``: one line); a non-UTF-8 file name keeps its bytes as \\udcXX escapes."""
    text = json.dumps(data, indent=None if compact else 2, ensure_ascii=False)
    typer.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def waiting(name: str) -> Callable[[], None]:
    """What to print when index ``name`` is locked by another writer and we wait for it."""
    return lambda: err(f"index {name!r} is being written by another process; waiting...")


def writer_waits(no_wait: bool, name: str) -> dict[str, Any]:
    """Keyword arguments of a write to index ``name``: wait for another writer (saying so), or fail at once."""
    return {"wait": not no_wait, "on_wait": waiting(name)}


def open_named_index(name: str, root: Path | None, **options: Any) -> Any:
    """The index a command names; the engine is imported only now, so ``--help`` stays fast."""
    from ..api import open_index

    return open_index(name, root=root, **options)


def skip_printer(quiet: bool) -> Callable[[str, str], None]:
    """Reports a file that could not be indexed as ``skipped: PATH: REASON`` (unless quiet)."""

    def on_skip(path: str, reason: str) -> None:
        if not quiet:
            err(f"skipped: {path}: {reason}")

    return on_skip


def print_rows(rows: list[Any], *, as_json: bool, empty: str, header: str, line: Callable[[Any], str],
               to_json: Callable[[Any], Any] = lambda r: r.as_dict()) -> None:
    """A listing on stdout: JSON for machines, else a header and one line per row (``empty`` on stderr if none)."""
    if as_json:
        echo_json([to_json(r) for r in rows])
        return
    if not rows:
        err(empty)
        return
    out(header)
    for row in rows:
        out(line(row))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
