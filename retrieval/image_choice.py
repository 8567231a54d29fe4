"""Which numerics the image tower runs in on this machine: ``--precision onnx-*`` and ``--precision auto``.

``auto`` on the CPU measures, once per machine and model, every candidate
(torch fp32, torch bf16 where the CPU multiplies bf16 natively, torch int8,
ONNX Runtime fp32 and int8) on the probe images of
:mod:`retrieval.image_export`: its images/s and its mean cosine to open_clip's
torch fp32 tower. The fastest candidate that keeps its accuracy floor
(:data:`FLOORS`) wins; a candidate below its floor is never chosen, however
fast. The choice, the rates and the cosines are recorded in
``<index root>/.cache/image/<fingerprint>/auto.json`` under this machine's key
(:func:`retrieval.image_onnx.machine_key`) and shown by ``mmsearch info``;
later loads read it and measure nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .fast_paths import lower_image_tower
from .image_export import ensure_image_export, probe_pixels, reference_vectors
from .image_onnx import AUTO_FILE, OnnxImageTower, image_export_dir, machine_key, read_auto_choices
from .manifest import write_json_atomic

if TYPE_CHECKING:
    from .encoder import Encoder

log = logging.getLogger(__name__)

# Mean cosine to torch fp32 on the probe images each candidate must keep to be chosen by auto.
FLOORS: dict[str, float] = {"fp32": 1.0, "onnx-fp32": 0.9999, "bf16": 0.995, "int8": 0.995, "onnx-int8": 0.995}
MEASURE_SECONDS = 0.5  # per candidate, after its accuracy run; between MIN_RUNS and MAX_RUNS timed batches
MIN_RUNS, MAX_RUNS = 2, 20
TIMED_BATCH = 8  # images per timed batch: a ViT-B-32 at fp32 on two cores takes ~0.6 s
AUTO_FORMAT = 1
_MEASURED: dict[tuple[str, str], dict[str, Any]] = {}  # (fingerprint, machine key) -> entry, this process


def attach_onnx(encoder: "Encoder", cache_root: Path, kind: str, threads: int) -> bool:
    """Run ``encoder``'s image tower under ONNX Runtime (``kind`` fp32 or int8); True if attached.

    When there is no verified export and one cannot be made, the encoder keeps
    torch fp32 and one warning says why (the logging module prints it on stderr).
    """
    tower = ensure_image_export(encoder, cache_root, kind, threads)
    if isinstance(tower, str):
        log.warning("mmsearch: no ONNX %s image tower for %s (%s); using torch fp32", kind, encoder.spec, tower)
        return False
    encoder.use_precision(f"onnx-{kind}", tower)
    return True


def choose_precision(encoder: "Encoder", cache_root: Path, threads: int, *, native_bf16: bool) -> str:
    """Apply what ``--precision auto`` picks for this machine to an fp32 ``encoder``; returns the precision.

    Reads the choice recorded for this machine, else measures the candidates
    (:func:`measure_candidates`) and records the result. ``native_bf16``: the
    CPU multiplies bf16 natively (else bf16 is emulated, slower than fp32, and not tried).
    """
    key = machine_key(threads)
    recorded = read_auto_choices(cache_root, encoder.fingerprint).get(key)
    stale = False
    if isinstance(recorded, dict) and recorded.get("format") == AUTO_FORMAT:
        chosen = str(recorded.get("chosen"))
        if _apply(encoder, cache_root, chosen, threads):
            encoder.auto_choice = recorded
            return chosen
        stale = True  # a recorded ONNX graph that can no longer be used (and could not be repaired): measure again
    # Measured in this process under another index root (a server's several roots, a test suite)?
    entry = None if stale else _MEASURED.get((encoder.fingerprint, key))
    if entry is None:
        # Once per model and machine, and it takes a while (an export and a few timed batches): say so.
        log.warning("mmsearch: finding the fastest way to run %s's image tower on this machine (once; this can "
                    "take a minute)", encoder.spec)
        measured = measure_candidates(encoder, cache_root, threads, native_bf16=native_bf16)
        entry = {"format": AUTO_FORMAT, "chosen": pick(measured), "threads": threads, "measured_at": time.time(),
                 "candidates": measured}
        _MEASURED[(encoder.fingerprint, key)] = entry
    chosen = str(entry["chosen"])
    _record(cache_root, encoder.fingerprint, key, entry)
    if not _apply(encoder, cache_root, chosen, threads):
        chosen = "fp32"
    encoder.auto_choice = entry
    return chosen


def pick(measured: dict[str, dict[str, Any]]) -> str:
    """The fastest candidate that passed its floor (fp32, the reference, always passes)."""
    passing = {name: m for name, m in measured.items() if m.get("passed")}
    if not passing:
        return "fp32"
    return max(passing, key=lambda name: float(passing[name].get("images_per_s") or 0.0))


def measure_candidates(encoder: "Encoder", cache_root: Path, threads: int, *,
                       native_bf16: bool) -> dict[str, dict[str, Any]]:
    """images/s and mean cosine to torch fp32 of every candidate on this machine, each with its floor."""
    pixels = probe_pixels(encoder)
    reference = reference_vectors(encoder, pixels)
    runners: dict[str, Callable[[torch.Tensor], np.ndarray] | str] = {"fp32": lambda x: reference_vectors(encoder, x)}
    for precision in ("bf16", "int8"):
        if precision == "bf16" and not native_bf16:
            continue  # emulated bf16 is slower than fp32: not worth a measurement
        try:
            runners[precision] = _torch_runner(encoder, precision)
        except Exception as exc:  # noqa: BLE001 - a tower torch cannot lower is simply not a candidate
            runners[precision] = f"cannot lower to {precision}: {type(exc).__name__}: {str(exc)[:200]}"
    for kind in ("fp32", "int8"):
        tower = ensure_image_export(encoder, cache_root, kind, threads)
        runners[f"onnx-{kind}"] = tower if isinstance(tower, str) else _onnx_runner(tower)
    measured: dict[str, dict[str, Any]] = {}
    for name, run in runners.items():
        floor = FLOORS[name]
        if isinstance(run, str):
            measured[name] = {"passed": False, "floor": floor, "why": run}
            continue
        try:
            # This run also warms the candidate up (allocations, kernel choice) before it is timed.
            cosine = 1.0 if name == "fp32" else float(np.mean(np.sum(run(pixels) * reference, axis=1)))
        except Exception as exc:  # noqa: BLE001 - e.g. torch int8 in a ResNet attention pool: not a candidate
            measured[name] = {"passed": False, "floor": floor, "why": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        passed = name == "fp32" or cosine >= floor
        row: dict[str, Any] = {"mean_cosine": round(cosine, 6), "floor": floor, "passed": passed}
        if passed:  # one below its floor is never chosen: no need to time it
            row["images_per_s"] = round(_rate(run, pixels[:TIMED_BATCH]), 2)
        measured[name] = row
    return measured


def _torch_runner(encoder: "Encoder", precision: str) -> Callable[[torch.Tensor], np.ndarray]:
    visual = copy.deepcopy(encoder.model.visual)
    dtype = lower_image_tower(SimpleNamespace(visual=visual), precision, encoder.device)  # type: ignore[arg-type]

    def run(pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = visual(pixels.to(encoder.device, dtype)).float().cpu().numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return run


def _onnx_runner(tower: OnnxImageTower) -> Callable[[torch.Tensor], np.ndarray]:
    return lambda pixels: tower.encode(pixels.numpy())


def _rate(run: Callable[[torch.Tensor], np.ndarray], pixels: torch.Tensor) -> float:
    """Images/s of the best timed batch (the runner is warm): batches until MEASURE_SECONDS."""
    best, spent, runs = float("inf"), 0.0, 0
    while runs < MIN_RUNS or (spent < MEASURE_SECONDS and runs < MAX_RUNS):
        t0 = time.perf_counter()
        run(pixels)
        took = time.perf_counter() - t0
        best, spent, runs = min(best, took), spent + took, runs + 1
    return pixels.shape[0] / max(best, 1e-9)


def _apply(encoder: "Encoder", cache_root: Path, chosen: str, threads: int) -> bool:
    if chosen == "fp32":
        return True
    if chosen.startswith("onnx-"):
        tower = ensure_image_export(encoder, cache_root, chosen[len("onnx-"):], threads)
        if isinstance(tower, str):
            return False
        encoder.use_precision(chosen, tower)
        return True
    if chosen not in FLOORS:
        return False
    encoder.use_precision(chosen)
    return True


def _record(cache_root: Path, fingerprint: str, key: str, entry: dict[str, Any]) -> None:
    directory = image_export_dir(cache_root, fingerprint)
    machines = read_auto_choices(cache_root, fingerprint)
    machines[key] = entry
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / AUTO_FILE, {"machines": machines})
    except OSError as exc:  # a read-only index root: the choice still applies to this process
        log.debug("could not record the auto choice in %s: %s", directory, exc)
