"""The records every reader of training data produces: items, where their bytes are, what was skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where one item's image bytes are.

    ``kind`` is ``tar`` (``offset``/``size`` of the member's data in the file at
    ``url``) or ``parquet`` (row ``row`` of row group ``row_group``; ``column`` is the
    image column, ``field`` the struct field holding bytes, if any). ``block``
    numbers the shard or row group, ``chunk`` is how many consecutive rows of it a
    reader fetches at once.
    """

    kind: str
    url: str
    block: int
    offset: int = 0
    size: int = 0
    row_group: int = 0
    row: int = 0
    column: str = ""
    field: str = ""
    chunk: int = 64


@dataclass(slots=True)
class PairItem:
    """One image and every caption that describes it.

    ``blob`` says where the image's bytes are when they live inside a shard (a tar
    member, a Parquet row); ``image_path`` is then a name for messages and for the
    train/validation split (``SHARD/KEY.jpg``), not a file.
    """

    image_path: Path
    captions: list[str]
    label: str | None = None
    split: str | None = None
    blob: BlobRef | None = None


@dataclass
class PairData:
    """Items read from one source plus what was skipped and why."""

    source: Path
    items: list[PairItem]
    skipped_rows: int = 0
    skipped_images: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return any(item.label for item in self.items)

    @property
    def n_captions(self) -> int:
        return sum(len(item.captions) for item in self.items)

    def summary(self) -> str:
        text = f"{len(self.items)} images, {self.n_captions} captions from {self.source}"
        skipped = self.skipped_rows + self.skipped_images
        if skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skip_reasons.items()))
            text += f"; skipped {skipped} ({reasons})"
        return text

    def skip(self, reason: str, image: bool = False) -> None:
        """Count one skipped row (or, with ``image``, one unreadable image) under ``reason``."""
        if image:
            self.skipped_images += 1
        else:
            self.skipped_rows += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1

    def next_block(self) -> int:
        """The block number the next shard or row group read into these items gets (blocks never repeat)."""
        last = next((item.blob for item in reversed(self.items) if item.blob is not None), None)
        return 0 if last is None else last.block + 1
