"""Option types shared by the command modules (``cli``, ``cli_maintenance``, ``cli_scale``, ``cli_serve``).

Defined once so that a flag reads and behaves the same in every command.
Only typer is imported here: ``mmsearch --help`` stays free of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Name of the index.")]
IndexDirOpt = Annotated[
    Optional[Path],
    typer.Option("--index-dir", help="Folder holding the indexes [default: $MMSEARCH_INDEX_DIR or ./indexes]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process writes the index.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Model numerics: auto (fp16 on GPUs, bf16 on CPUs with native bf16, else fp32), fp32, bf16, "
        "fp16 (GPUs) or int8 (CPU, image tower only). All keep cosine >= 0.99 to fp32.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", min=1, help="Torch CPU threads [default: one per available core].")
]
