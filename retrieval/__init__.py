"""mmsearch: multimodal (image + text) search.

The public Python API. Heavy modules (torch, open_clip, faiss) are imported
lazily, on first use, so that ``import retrieval`` and ``mmsearch --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import MMSearchError

__version__ = "0.1.0"

_LAZY = {
}

__all__ = ["MMSearchError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
