"""An index's ANN policy over time: what to build now, when to rebuild, with tuning.

The policy (``--ann``, ``--max-memory``, ``--target-recall``) is saved in the
manifest under ``ann.policy``; the built index's :class:`~retrieval.ann.AnnConfig`
(kind, parameters, the rule that chose them, tuned search parameters and the
recall they measured) is saved beside it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .ann import ANN_TYPES, AnnConfig, VectorIndex
from .ann_policy import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TARGET_RECALL,
    choose_ann,
    make_config,
    needs_rebuild,
    tune,
)
from .errors import MMSearchError

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
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A policy from user options (``None`` keeps ``base``'s value)."""
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
    return policy


def plan(policy: dict[str, Any], n: int, dim: int) -> AnnConfig:
    """The config to build for ``n`` items under ``policy``."""
    kind, budget = policy["ann"], int(policy["max_memory"])
    config = choose_ann(n, dim, max_memory=budget) if kind == "auto" else make_config(kind, n, dim, max_memory=budget)
    if config.needs_training and n < 4 * (config.nlist or 1):
        # Too few vectors to train the lists well (< 4 per list): exact until there are.
        return make_config("flat", n, dim, rule=f"{kind}: only {n} items, exact search until there are enough to train")
    return config


def build(policy: dict[str, Any], dim: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    """Build and tune the index the policy asks for over these vectors."""
    config = plan(policy, len(ids), dim)
    index = VectorIndex.build(dim, ids, vectors, config)
    return tune(index, ids, vectors, target=float(policy["target_recall"]))


def needs_refresh(policy: dict[str, Any], index: VectorIndex, n: int, dim: int) -> bool:
    """Whether the index should be rebuilt for ``n`` items: kind changed, untrained, or grown/shrunk a lot."""
    wanted = plan(policy, n, dim)
    current = index.config
    if wanted.type != current.type:
        return True
    if current.needs_training and not index.is_trained:
        return True
    if current.type == "ivfpq" and wanted.pq_m != current.pq_m:
        return True
    if current.target_recall is not None and abs(current.target_recall - float(policy["target_recall"])) > 1e-9:
        return True
    return needs_rebuild(current, n)


def with_policy(config: AnnConfig, policy: dict[str, Any]) -> dict[str, Any]:
    """What the manifest stores under ``ann`` (the caller adds generation / ntotal)."""
    return {**config.as_dict(), "policy": dict(policy)}

