"""Heatmaps beside the hits of a results page (``mmsearch query ... --html results.html --explain``).

For each image hit, :meth:`retrieval.api.Index.explain_overlays` draws why it
matched the query on the photo as the user sees it; this module turns those
overlays into ``data:`` URIs that :func:`retrieval.html_report.write_results_page`
places beside each thumbnail (its ``heatmaps`` argument), so the page stays one
self-contained file. :func:`explained_payload` is the same for one picture as
the server's ``POST /api/items/{id}/explain`` answers it.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from .explanation import ExplainedItem
    from .search import Hit

# The heatmaps are shown at thumbnail size: the longest side of the drawn photo, in pixels.
HEATMAP_SIDE = 256


def heatmap_uris(
    index: Any, query: Any, hits: "Sequence[Hit]", *, method: str | None = None, max_side: int = HEATMAP_SIDE,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict[int, str]:
    """``{hit id: data URI}`` of each image hit's heatmap overlay (JPEG, longest side ``max_side``).

    ``index`` is the :class:`retrieval.api.Index` the hits came from and
    ``query`` the query that found them (a text or query terms, as
    :meth:`~retrieval.api.Index.explain` takes it); ``method`` defaults to the
    index's default explanation method. Text hits have no picture and are left
    out; a hit whose file can no longer be read is reported to ``on_skip(path,
    reason)`` and left out.
    """
    paths = {h.id: h.path for h in hits if h.path is not None}
    options = {} if method is None else {"method": method}
    uris: dict[int, str] = {}
    for drawn in index.explain_overlays(query, list(paths), max_side=max_side, format="JPEG", **options):
        if drawn.error is not None or drawn.image is None:
            if on_skip is not None:
                on_skip(paths[drawn.item], drawn.error or "no heatmap")
            continue
        uris[drawn.item] = f"data:{drawn.media_type};base64," + base64.b64encode(drawn.image).decode("ascii")
    return uris


def data_uri(drawn: "ExplainedItem") -> str:
    """The overlay of an explained picture as a ``data:`` URI (its format's MIME type, base64)."""
    if drawn.image is None:
        raise ValueError(f"no overlay to encode: {drawn.error or 'nothing was drawn'}")
    return f"data:{drawn.media_type};base64," + base64.b64encode(drawn.image).decode("ascii")


def explained_payload(drawn: "ExplainedItem") -> dict[str, Any]:
    """JSON for one explained picture: the explanation (grid, terms with pull/push, boxes, geometry) and the overlay.

    ``overlay`` is a ``data:`` URI a web page can put straight into an ``<img>``.
    """
    if drawn.explanation is None:
        raise ValueError(f"nothing to send: {drawn.error or 'the picture was not explained'}")
    return {"item": drawn.item, "explanation": drawn.explanation.as_dict(), "overlay": data_uri(drawn),
            "media_type": drawn.media_type}
