"""The image tower under ONNX Runtime: open a verified export and embed pixel batches with it.

The export itself (torch, open_clip) is written and verified by
:mod:`retrieval.image_export`; this module needs only numpy and onnxruntime,
and reads the records kept beside the export:

``<index root>/.cache/image/<fingerprint>/``
    ``fp32.onnx``, ``int8.onnx``  the graphs (pixels -> unit vectors, any batch size);
    ``verified.json``             per graph: its size and sha256, and its cosines to
                                  open_clip's torch fp32 tower on probe images;
    ``auto.json``                 per machine: what ``--precision auto`` measured and chose;
    ``unsupported.json``          the tower has no ONNX form (the check is not repeated).

A graph is used only when the record says it passed its accuracy floor and
the file on disk still has the recorded size and hash, so a truncated or
altered file is never run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

FORMAT = 1
ONNX_KINDS: tuple[str, ...] = ("fp32", "int8")
RECORD_FILE = "verified.json"
AUTO_FILE = "auto.json"
UNSUPPORTED_FILE = "unsupported.json"
INPUT_NAME = "pixels"


def image_export_dir(cache_root: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where the image-tower exports of the model with ``fingerprint`` live (beside its text export)."""
    return Path(cache_root) / ".cache" / "image" / fingerprint


def onnx_file(directory: Path, kind: str) -> Path:
    """The graph file of one kind (``fp32`` or ``int8``) in an export directory."""
    return directory / f"{kind}.onnx"


def file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks (graphs are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class OnnxImageTower:
    """An exported image tower run by ONNX Runtime on the CPU."""

    def __init__(self, path: Path, kind: str, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("the ONNX image path needs onnxruntime: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        # Threads come from the same setting as torch's (--threads, else the CPUs this process may use).
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the decoding workers that feed the next batch, and
        # whatever else the laptop runs, need those cores between runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
            raise ModelLoadError(f"cannot open {path}: {str(exc).splitlines()[0][:200]}") from exc
        self.path = path
        self.kind = kind
        self.threads = int(threads)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a preprocessed (n, 3, H, W) float32 batch; returns (n, dim) float32 unit rows."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        out = np.asarray(self.session.run(None, {INPUT_NAME: x})[0], dtype=np.float32)
        # Re-normalise in float32: an int8 graph's output may be off unit length by ~1e-3.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def verified_entry(directory: Path, kind: str) -> dict[str, Any] | None:
    """The verification record of one graph kind, when there is one."""
    record = read_json(directory / RECORD_FILE)
    if record is None or record.get("format") != FORMAT:
        return None
    entry = (record.get("kinds") or {}).get(kind)
    return entry if isinstance(entry, dict) else None


def load_verified_tower(directory: Path, kind: str, threads: int = 1) -> OnnxImageTower | None:
    """The graph of ``kind`` when its record says it passed and the file is intact; else None."""
    entry = verified_entry(directory, kind)
    path = onnx_file(directory, kind)
    if entry is None or not entry.get("passed") or not path.is_file():
        return None
    try:
        if path.stat().st_size != entry.get("size") or file_digest(path) != entry.get("sha256"):
            return None
        return OnnxImageTower(path, kind, threads)
    except (OSError, ModelLoadError):
        return None


def machine_key(threads: int) -> str:
    """Names this machine for ``auto.json``: CPU model and features, and the threads the runtimes get.

    A measurement made on one machine (or with another thread count) says
    nothing about another, so each gets its own choice.
    """
    model, flags = platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    digest = hashlib.sha256(f"{model}|{flags}".encode()).hexdigest()[:8]
    return f"{model} [{digest}] x{threads} threads"


def read_auto_choices(cache_root: str | os.PathLike[str], fingerprint: str) -> dict[str, Any]:
    """What ``--precision auto`` chose for this model, per machine (``{}`` when never measured)."""
    data = read_json(image_export_dir(cache_root, fingerprint) / AUTO_FILE) or {}
    machines = data.get("machines")
    return machines if isinstance(machines, dict) else {}
