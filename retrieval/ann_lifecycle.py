"""An index's ANN policy over time: what to build now, when to rebuild, with tuning.

The policy (``--ann``, ``--max-memory``, ``--target-recall``, and an optional
``max_latency_ms``) is saved in the manifest under ``ann.policy``; the built
index's :class:`~retrieval.ann.AnnConfig` (kind, parameters, the rule that
chose them, tuned search parameters, the held-out recall they measured, and a
shortfall with what would meet the target) is saved beside it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .ann import ANN_TYPES, AnnConfig, VectorIndex
from .ann_policy import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TARGET_RECALL,
    alternatives,
    choose_ann,
    estimate_memory,
    make_config,
    needs_rebuild,
)
from .ann_tuning import tune
from .errors import MMSearchError
from .vector_copy import VectorSource

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1.5g"`` or a byte count -> bytes."""
    match = _SIZE.match(text or "")
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in _UNITS:
        raise MMSearchError(f"bad memory size {text!r}: write e.g. 512MiB, 2GiB or 4GB")
    return int(float(match.group(1)) * _UNITS[unit])


def default_policy() -> dict[str, Any]:
    return {"ann": "auto", "max_memory": DEFAULT_MAX_MEMORY, "target_recall": DEFAULT_TARGET_RECALL}


def policy_of(manifest_ann: dict[str, Any] | None) -> dict[str, Any]:
    return {**default_policy(), **((manifest_ann or {}).get("policy") or {})}


def make_policy(ann: str | None = None, max_memory: str | int | None = None, target_recall: float | None = None,
                base: dict[str, Any] | None = None, *, max_latency_ms: float | None = None) -> dict[str, Any]:
    """A policy from user options (``None`` keeps ``base``'s value).

    ``max_latency_ms`` caps the tuner's choice (p50 of one query); without it
    the tuner takes the fastest search that meets the target, however slow.
    """
    policy = dict(base or default_policy())
    if ann is not None:
        if ann != "auto" and ann not in ANN_TYPES:
            raise MMSearchError(f"unknown --ann {ann!r}: use auto, {', '.join(ANN_TYPES)}")
        policy["ann"] = ann
    if max_memory is not None:
        policy["max_memory"] = parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory)
    if target_recall is not None:
        if not 0 < target_recall <= 1:
            raise MMSearchError(f"--target-recall must be in (0, 1], got {target_recall}")
        policy["target_recall"] = float(target_recall)
    if max_latency_ms is not None:
        if not max_latency_ms > 0:
            raise MMSearchError(f"the latency limit must be a positive number of milliseconds, got {max_latency_ms}")
        policy["max_latency_ms"] = float(max_latency_ms)
    return policy


def plan(policy: dict[str, Any], n: int, dim: int) -> AnnConfig:
    """The config to build for ``n`` items under ``policy``."""
    kind, budget = policy["ann"], int(policy["max_memory"])
    config = choose_ann(n, dim, max_memory=budget) if kind == "auto" else make_config(kind, n, dim, max_memory=budget)
    if config.needs_training and n < 4 * (config.nlist or 1):
        # Too few vectors to train the lists well (< 4 per list): exact until there are.
        return make_config("flat", n, dim, rule=f"{kind}: only {n} items, exact search until there are enough to train")
    return config


def build(policy: dict[str, Any], dim: int, source: VectorSource, *, workdir: Path | None = None,
          n_queries: int = 200) -> VectorIndex:
    """Build and tune the index the policy asks for over every vector of ``source``.

    When the first build misses the target, the other builds the budget
    allows (:func:`~retrieval.ann_policy.alternatives`) are tried, and the
    better one is kept. A shortfall that remains is recorded with ``needs``:
    what would meet the target, in the user's terms. ``workdir`` receives the
    temp files of on-disk lists and of the re-rank copy (see
    :meth:`VectorIndex.build_from`).
    """
    n = len(source)
    budget = int(policy["max_memory"])
    target = float(policy["target_recall"])
    limit = policy.get("max_latency_ms")
    config = plan(policy, n, dim)

    def made(cfg: AnnConfig) -> VectorIndex:
        index = VectorIndex.build_from(dim, source, cfg, workdir=workdir)
        return tune(index, source, target=target, n_queries=n_queries, max_latency_ms=limit)

    index = made(config)
    short = index.config.shortfall
    # Another build raises recall, not speed: no use when only a latency limit stood in the way.
    for other in alternatives(config, n, dim, max_memory=budget) if short and not short.get("slower") else []:
        candidate = made(other)
        if (candidate.config.measured_recall or 0) > (index.config.measured_recall or 0):
            index, candidate = candidate, index
        candidate.discard()
        if not index.config.shortfall:
            break
    if index.config.shortfall:
        index.config = index.config.but(shortfall={**index.config.shortfall, "needs": needs(index.config, policy, n, dim)})
    return index


def needs(config: AnnConfig, policy: dict[str, Any], n: int, dim: int) -> list[str]:
    """What would meet the target a shortfall describes, as lines for a person (and the options that do it)."""
    short = config.shortfall or {}
    lines = []
    full = short.get("full_vectors")
    if full:
        ivf = make_config("ivf", n, dim)
        lines.append(
            f"more memory: --max-memory {_human(estimate_memory(ivf, n, dim))} keeps full vectors (IVF, exact "
            f"scores), whose lists reach recall {full['recall']} at nprobe {full['nprobe']} on these queries"
        )
    slower = short.get("slower")
    if slower:
        params = ", ".join(f"{k} {v}" for k, v in slower["search"].items())
        lines.append(
            f"a slower search: {params} reaches {slower['recall']} at p50 {slower['p50_ms']} ms, over the "
            f"{policy.get('max_latency_ms')} ms limit"
        )
    if short.get("limit_ms") is not None:
        lines.append(f"a higher latency limit: nothing measured runs within {short['limit_ms']} ms "
                     f"(what is used now takes p50 {short.get('p50_ms')} ms)")
    if short.get("deeper") and not lines:
        if config.type == "hnsw":
            # HNSW already scores full vectors: its graph is what misses neighbours (measured on 1M CLIP-like
            # vectors: 0.62 at efSearch 4096, where IVF's lists reached 0.97; docs/scaling.md).
            lines.append("the most thorough search tried falls short, and HNSW already keeps full vectors: its "
                         "graph misses neighbours on these vectors; IVF (--ann ivf, or --ann auto) scans whole "
                         "lists and is what raises recall")
        else:
            lines.append("the most thorough search tried falls short: a larger --max-memory (a bigger code or full "
                         "vectors) is what raises recall")
    if not lines:
        lines.append(f"a lower --target-recall ({short.get('reached')} is what this index reaches)")
    return lines


def _human(n: int) -> str:
    return f"{math.ceil(n / 2**30 * 10) / 10:.1f}GiB"


def needs_refresh(policy: dict[str, Any], index: VectorIndex, n: int, dim: int) -> bool:
    """Whether the index should be rebuilt for ``n`` items: kind changed, untrained, or grown/shrunk a lot."""
    wanted = plan(policy, n, dim)
    current = index.config
    if wanted.type != current.type:
        return True
    if current.needs_training and not index.is_trained:
        return True
    if current.type == "ivfpq" and (wanted.pq_m, wanted.pq_bits) != (current.pq_m, current.pq_bits):
        return True
    if wanted.lists_on_disk != current.lists_on_disk:
        return True
    if current.target_recall is not None and abs(current.target_recall - float(policy["target_recall"])) > 1e-9:
        return True
    return needs_rebuild(current, n)


def with_policy(config: AnnConfig, policy: dict[str, Any]) -> dict[str, Any]:
    """What the manifest stores under ``ann`` (the caller adds generation / ntotal)."""
    return {**config.as_dict(), "policy": dict(policy)}

