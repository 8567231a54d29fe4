"""Image-caption pairs for training and evaluation.

Five layouts are read:
  - a CSV file with a header (``image,caption[,label][,split]``; other common column
    names are recognised), image paths relative to an images folder;
  - a JSONL file, one object per line with ``image`` and ``caption`` (or ``captions``:
    a list), optionally ``label`` and ``split``;
  - a folder of images, each with a sidecar ``.txt`` file of captions (one per line);
  - webdataset tar shards and Parquet files (:mod:`retrieval.train.shards`).

Several captions of one image are the same item's positives, never separate items.
Reading is an index pass: captions and where each image is, never its pixels. Bad
rows and missing files are skipped and counted here; undecodable images are
skipped and counted when training or evaluation meets them (see
:mod:`retrieval.train.pipeline`). Only data with no usable item at all is an error.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from ..config import IMAGE_EXTENSIONS
from ..errors import DataError
from ..loading import LoadedImage
from .records import PairData, PairItem
from .shards import BlobReader, looks_like_shards, read_shards

__all__ = ["PairData", "PairItem", "Split", "heldout_items", "load_item", "read_pairs", "split_items"]

IMAGE_COLUMNS = ("image", "filepath", "file", "path", "image_path", "img", "filename")
CAPTION_COLUMNS = ("caption", "text", "title", "captions")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_COLUMNS = ("split",)
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class Split:
    train: list[PairItem]
    val: list[PairItem]


def read_pairs(
    source: str | Path,
    images_dir: str | Path | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    check_images: bool = True,
) -> PairData:
    """Read image-caption pairs from a CSV, a JSONL file, a folder with sidecar captions,
    webdataset tar shards (``'shards/{00000..00099}.tar'``, local or fsspec URLs) or Parquet.

    ``images_dir``: where relative image paths start (default: the file's folder).
    ``check_images``: skip (and count) rows whose image file does not exist. No image
    is decoded here: an undecodable one is skipped and counted when it is first met.
    Raises ``DataError`` when the source is missing or yields no usable item.
    """
    if looks_like_shards(str(source)):
        data = read_shards(str(source), images_dir, image_column, caption_column)
        if check_images:
            _drop_missing(data)
        if not data.items:
            raise DataError(f"no usable image-caption pairs in {str(source)!r} ({data.summary()})")
        return data
    src = Path(source).expanduser()
    if not src.exists():
        raise DataError(f"training data {str(src)!r} does not exist")
    if src.is_dir() and (src / "captions.csv").is_file():  # e.g. a catalogue written by `mmsearch synth`
        src = src / "captions.csv"
    if src.is_dir():
        data = _read_sidecar_folder(src)
    else:
        base = Path(images_dir).expanduser() if images_dir else src.parent
        suffix = src.suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = _jsonl_rows(src)
        elif suffix in (".csv", ".tsv"):
            rows = _csv_rows(src, image_column, caption_column)
        else:
            raise DataError(f"{str(src)!r}: expected a .csv, a .jsonl or a folder of images with .txt captions")
        data = _group_rows(src, rows, base)
    if check_images:
        _drop_missing(data)
    if not data.items:
        raise DataError(f"no usable image-caption pairs in {str(src)!r} ({data.summary()})")
    return data


_RowT = tuple[str | None, list[str], str | None, str | None]  # image, captions, label, split


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, src: Path) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    if wanted:
        if wanted in columns:
            return wanted
        if wanted.lower() in lowered:
            return lowered[wanted.lower()]
        raise DataError(f"{str(src)!r} has no {what} column {wanted!r}; its columns are {', '.join(columns)}")
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def _csv_rows(src: Path, image_column: str | None, caption_column: str | None) -> Iterable[_RowT | None]:
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {str(src)!r}: {exc}") from exc
    delimiter = "\t" if src.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    img_col = _pick(columns, image_column, IMAGE_COLUMNS, "image", src)
    cap_col = _pick(columns, caption_column, CAPTION_COLUMNS, "caption", src)
    if img_col is None or cap_col is None:
        raise DataError(
            f"{str(src)!r} needs a header with an image column ({'/'.join(IMAGE_COLUMNS[:3])}) and a caption "
            f"column ({'/'.join(CAPTION_COLUMNS[:3])}); found {', '.join(columns) or 'no header'} "
            "(or name them with --image-column/--caption-column)"
        )
    label_col = _pick(columns, None, LABEL_COLUMNS, "label", src)
    split_col = _pick(columns, None, SPLIT_COLUMNS, "split", src)
    for row in reader:
        if None in row:  # more fields than the header: a malformed row
            yield None
            continue
        caption = (row.get(cap_col) or "").strip()
        yield (
            (row.get(img_col) or "").strip() or None,
            [caption] if caption else [],
            ((row.get(label_col) or "").strip() or None) if label_col else None,
            ((row.get(split_col) or "").strip().lower() or None) if split_col else None,
        )


def _jsonl_rows(src: Path) -> Iterable[_RowT | None]:
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {str(src)!r}: {exc}") from exc
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            yield None
            continue
        if not isinstance(obj, dict):
            yield None
            continue
        image = next((obj[k] for k in IMAGE_COLUMNS if isinstance(obj.get(k), str)), None)
        caps = obj.get("captions", obj.get("caption", obj.get("text")))
        captions = [caps] if isinstance(caps, str) else [c for c in caps if isinstance(c, str)] if isinstance(
            caps, list) else []
        label = obj.get("label")
        split = obj.get("split")
        yield (
            image,
            [c.strip() for c in captions if c.strip()],
            str(label) if label not in (None, "") else None,
            str(split).lower() if split else None,
        )


def _group_rows(src: Path, rows: Iterable[_RowT | None], base: Path) -> PairData:
    data = PairData(source=src, items=[])
    by_image: dict[Path, PairItem] = {}
    for row in rows:
        if row is None:
            data.skip("malformed rows")
            continue
        image, captions, label, split = row
        if not image or not captions:
            data.skip("rows without image or caption")
            continue
        path = Path(image).expanduser()
        path = path if path.is_absolute() else base / path
        item = by_image.get(path)
        if item is None:
            item = by_image[path] = PairItem(image_path=path, captions=[], label=label, split=split)
            data.items.append(item)
        for caption in captions:
            if caption not in item.captions:
                item.captions.append(caption)
        item.label = item.label or label
        item.split = item.split or split
    return data


def _read_sidecar_folder(root: Path) -> PairData:
    data = PairData(source=root, items=[])
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            data.skip("images without a .txt caption")
            continue
        try:
            lines = sidecar.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            data.skip("unreadable caption files")
            continue
        captions = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
        if not captions:
            data.skip("empty caption files")
            continue
        label = path.parent.name if path.parent != root else None
        data.items.append(PairItem(image_path=path, captions=captions, label=label))
    return data


def decode_image(path: Path, min_side: int | None = None) -> Image.Image | None:
    """RGB image (EXIF orientation applied), or None when the file cannot be decoded."""
    from ..loading import load_image

    return load_image(path, min_side=min_side).image


def load_item(item: PairItem, reader: BlobReader | None = None, min_side: int | None = None) -> LoadedImage:
    """Decode ``item``'s picture wherever it is (a file, a tar member, a Parquet row); never raises.

    ``min_side``: reduced-size JPEG decoding keeping the shorter side >= this (as indexing does).
    """
    from ..loading import load_image

    source: str | Path | bytes | None = item.image_path
    if item.blob is not None:
        if reader is None:
            reader = _shared_reader()
        source, error = reader.read(item.blob)
        if source is None:
            return LoadedImage(None, error or "unreadable shards")
    elif not item.image_path.is_file():
        return LoadedImage(None, "missing image files")
    return load_image(source, min_side=min_side)


_READER: BlobReader | None = None


def _shared_reader() -> BlobReader:
    global _READER
    if _READER is None:
        _READER = BlobReader()
    return _READER


def _drop_missing(data: PairData) -> None:
    """Skip rows whose image file is not there (a stat each, no decoding: cheap even for 100k rows)."""
    kept = []
    for item in data.items:
        if item.blob is None and not item.image_path.is_file():
            data.skip("missing image files", image=True)
        else:
            kept.append(item)
    data.items = kept


def split_items(
    items: Sequence[PairItem], val_fraction: float = 0.1, seed: int = 0, max_val: int | None = None
) -> Split:
    """Train/validation items.

    A ``split`` column wins (``train`` trains, ``val``/``valid``/``validation`` validates,
    anything else, e.g. ``test``, is left out of both). Without one, a deterministic
    split by a hash of each image path: the same item always lands on the same side,
    whatever the order or number of rows.
    """
    if any(item.split for item in items):
        train = [i for i in items if i.split == TRAIN_SPLIT]
        val = [i for i in items if i.split in ("val", "valid", "validation")]
    else:
        train, val = [], []
        for item in items:
            (val if _hash_unit(_split_key(item), seed) < val_fraction else train).append(item)
    if max_val is not None and len(val) > max_val:
        val = sorted(val, key=lambda i: _hash_unit(_split_key(i), seed + 1))[:max_val]
    return Split(train=train, val=val)


def heldout_items(items: Sequence[PairItem], val_fraction: float = 0.1, seed: int = 0) -> list[PairItem]:
    """What ``mmsearch eval`` measures by default: everything training did not see."""
    if any(item.split for item in items):
        return [i for i in items if i.split != TRAIN_SPLIT]
    return split_items(items, val_fraction, seed).val


def _split_key(item: PairItem) -> str:
    # The last two path parts: stable when the data moves, distinct across class folders.
    return "/".join(item.image_path.parts[-2:])


def _hash_unit(key: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
