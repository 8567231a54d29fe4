"""mmsearch: multimodal (image + text) search.

The public Python API. Heavy modules (torch, open_clip, faiss) are imported
lazily, on first use, so that ``import retrieval`` and ``mmsearch --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import MMSearchError

__version__ = "0.1.0"

_LAZY = {
    "Index": ".api",
    "IndexInfo": ".api",
    "open_index": ".api",
    "create_index": ".api",
    "open_or_create_index": ".api",
    "list_indexes": ".api",
    "delete_index": ".api",
    "IndexReport": ".indexer",
    "Hit": ".search",
    "QueryTerm": ".query",
    "Filters": ".query",
    "classify": ".zeroshot",
    "Encoder": ".encoder",
    "load_encoder": ".encoder",
}

__all__ = ["MMSearchError", *_LAZY]

if TYPE_CHECKING:
    from .api import Index, IndexInfo, create_index, delete_index, list_indexes, open_index, open_or_create_index
    from .encoder import Encoder, load_encoder
    from .indexer import IndexReport
    from .query import Filters, QueryTerm
    from .search import Hit
    from .zeroshot import classify


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
