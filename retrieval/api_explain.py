"""The explanation half of :class:`retrieval.api.Index`: why did this match? Heatmaps over the picture (issue 21)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from .errors import (
    ImageDecodeError,
    InvalidQueryError,
    ItemNotFoundError,
)
from .explanation import DEFAULT_METHOD as EXPLAIN_DEFAULT_METHOD
from .explanation import ExplainedItem
from .query import QueryTerm, combine

if TYPE_CHECKING:
    from PIL import Image

    from .explanation import Explanation


PathLike = str | os.PathLike[str]


# What Index.explain takes as a query: a text, one term or several, or a vector.
ExplainQuery = str | QueryTerm | Sequence[QueryTerm] | np.ndarray


class ExplainMixin:
    """Index.explain and its overlays, for texts, combined and negative terms, items and pictures; mixed into Index."""

    # -- why did this match? heatmaps over the picture (issue 21) ----------------

    def explain(
        self, query: ExplainQuery, item: "PathLike | int | Image.Image", *, method: str = EXPLAIN_DEFAULT_METHOD,
        **options: Any,
    ) -> "Explanation":
        """Why ``item`` scores as it does for ``query``: a signed heatmap over the picture, with the index's model.

        ``query``: a text, one :class:`QueryTerm` or several (combined and
        negative queries, as :meth:`search` takes them), or a vector. ``item``:
        an indexed item's id, a picture's path (indexed or not) or a PIL image.
        ``method``: one of :data:`EXPLAIN_METHODS` (see :mod:`retrieval.explain`);
        ``options`` go to it. The result's ``terms`` hold each term's share of
        the map: a negative term's share shows what pushed the picture away.

        Raises ``InvalidQueryError`` (bad query, unknown method or option),
        ``ItemNotFoundError``, ``ImageDecodeError`` (no such picture, or not
        decodable) and ``ExplainUnsupportedError`` (the method cannot read this
        model's image tower; the message names one that can).
        """
        return self._explain(self._explain_terms(query), self._explain_picture(item), method, options)

    def explain_overlay(
        self, query: ExplainQuery, item: "PathLike | int | Image.Image", *, method: str = EXPLAIN_DEFAULT_METHOD,
        max_side: int | None = 1024, format: str = "PNG", alpha: float = 0.6, term: int | None = None,
        **options: Any,
    ) -> "ExplainedItem":
        """:meth:`explain`, and the overlay drawn on the photo as the user sees it, as an image file.

        The overlay is the EXIF-oriented full frame (parts the model did not see
        shaded), its longest side at most ``max_side`` (None: full size), in
        ``format`` (PNG, JPEG or WEBP); ``term`` (0-based) draws one query
        term's share instead of the total. What an HTTP endpoint returns: the
        result's ``explanation.as_dict()`` and its ``image`` bytes
        (``media_type``). Raises as :meth:`explain` does.
        """
        picture = self._explain_picture(item)
        explanation = self._explain(self._explain_terms(query), picture, method, options)
        data = explanation.overlay_bytes(picture, format=format, max_side=max_side, alpha=alpha, term=term)
        return ExplainedItem(item, explanation, data, format.upper())

    def explain_overlays(
        self, query: ExplainQuery, items: "Sequence[PathLike | int]", *, method: str = EXPLAIN_DEFAULT_METHOD,
        max_side: int | None = 256, format: str = "JPEG", alpha: float = 0.6, **options: Any,
    ) -> Iterator["ExplainedItem"]:
        """:meth:`explain_overlay` for several pictures (e.g. a query's hits), the query embedded once.

        A picture that cannot be explained (its file gone or undecodable) is
        yielded with ``error`` set, and the others still are; a bad query, an
        unknown method or a tower the method cannot read raises at once.
        """
        terms = self._explain_terms(query)
        for item in items:
            try:
                picture = self._explain_picture(item)
                explanation = self._explain(terms, picture, method, options)
                data = explanation.overlay_bytes(picture, format=format, max_side=max_side, alpha=alpha)
            except (ImageDecodeError, ItemNotFoundError) as exc:
                yield ExplainedItem(item, None, None, format.upper(), error=str(exc))
                continue
            yield ExplainedItem(item, explanation, data, format.upper())

    def _explain(self, terms: list[tuple[np.ndarray, float, str | None]], picture: "PathLike | Image.Image",
                 method: str, options: dict[str, Any]) -> "Explanation":
        from .explain import (
            explain as compute,  # torch: only when a heatmap is asked for
        )

        return compute(self.encoder, terms, picture, method=method, **options)

    def _explain_terms(self, query: ExplainQuery) -> list[tuple[np.ndarray, float, str | None]]:
        """(unit vector, weight, label) per query term, embedded as a search embeds them."""
        if isinstance(query, str):
            terms = [QueryTerm.text(query)]
        elif isinstance(query, QueryTerm):
            terms = [query]
        elif isinstance(query, np.ndarray):
            terms = [QueryTerm.vector(query)]
        else:
            try:
                terms = list(query)
            except TypeError:
                raise InvalidQueryError(
                    f"a query to explain is a text, query terms or a vector, not {type(query).__name__}"
                ) from None
        if not terms:
            raise InvalidQueryError("empty query: give some words (or an image) whose match to explain")
        if not all(isinstance(t, QueryTerm) for t in terms):
            raise InvalidQueryError("a query to explain is a text, query terms or a vector")
        vectors, labels = [], []
        for term in terms:
            if term.kind == "text":
                vectors.append(self.queries.text(str(term.value)))
                labels.append(str(term.value).strip())
            elif term.kind == "image":
                vectors.append(self.queries.image(term.value))  # type: ignore[arg-type]
                path = term.value if isinstance(term.value, (str, os.PathLike)) else None
                labels.append(f"image {os.path.basename(os.fspath(path))}" if path is not None else "image")
            elif term.kind == "item":
                vectors.append(self.queries.item(term.value))  # type: ignore[arg-type]
                labels.append(f"item {term.value}")
            else:
                vectors.append(np.asarray(term.value, dtype=np.float32).reshape(-1))
                labels.append(None)
        weights = [t.weight for t in terms]
        combine(vectors, weights)  # the checks (and messages) of a search: weights, sizes, cancelling terms
        return [(v, float(w), label) for v, w, label in zip(vectors, weights, labels)]

    def _explain_picture(self, item: "PathLike | int | Image.Image") -> "PathLike | Image.Image":
        """The picture named by an item id, a path (an existing file is used as it is) or a PIL image."""
        from PIL import Image

        if isinstance(item, Image.Image):
            return item
        if isinstance(item, bool) or not isinstance(item, (int, str, os.PathLike)):
            raise InvalidQueryError(f"a picture to explain is an item id, a file path or a PIL image, not "
                                    f"{type(item).__name__}")
        if not isinstance(item, int):
            if os.path.isfile(item):
                return Path(item)
            if os.path.isdir(item):
                raise ImageDecodeError(f"{os.fspath(item)} is a folder, not a picture")
            if not os.fspath(item).strip():
                raise ImageDecodeError("name the picture to explain (an empty path names nothing)")
        try:
            item_id = self.find_item(item)
        except ItemNotFoundError:
            if isinstance(item, int) or (isinstance(item, str) and item.isascii() and item.isdigit()):
                raise
            raise ImageDecodeError(f"no such file: {os.fspath(item)}") from None
        row = self.item(item_id)
        if row is None or row.kind != "image" or row.path is None:
            raise InvalidQueryError(f"item {item_id} is a text: a heatmap needs a picture")
        return Path(row.path)
