"""HTTP range requests (RFC 9110, section 14) for original files: how a browser seeks in a video.

A ``<video>`` element asks for ``Range: bytes=START-`` and expects ``206
Partial Content``; without it, a browser cannot jump to a moment of an MP4
whose index is at the end, and may refuse to seek at all. One range per
request is served; a header this module cannot read, or several ranges, gets
the whole file (a server may ignore Range); a range that starts past the end
gets ``416`` with the file's size. The bytes come from the already checked,
open file (:meth:`retrieval.api.Index.open_original`): the range changes
what is read, never which file.
"""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import StreamingResponse

from .server_files import content_disposition, stream_file  # one disposition rule for every file served
from .server_guard import ApiError

__all__ = ["parse_range", "stream_ranges"]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_CHUNK = 256 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte (inclusive) that ``header`` asks of a ``size``-byte file; None: send it whole.

    Raises ``ApiError(416)`` for a range that starts at or past the end.
    """
    if not header or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)  # "bytes=-500": the last 500 bytes
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # not a valid range: ignored, as the RFC says
    if first >= size:
        raise _unsatisfiable(size)
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, "range_not_satisfiable", f"the file has {size} bytes",
                    headers={"Content-Range": f"bytes */{size}"})


def stream_ranges(source: BinaryIO, name: str, range_header: str | None) -> StreamingResponse:
    """The open file ``source`` (closed at the end): whole (200), or the one range asked for (206).

    Every answer says ``Accept-Ranges: bytes``, so a player knows it may seek.
    """
    size = os.fstat(source.fileno()).st_size
    try:
        wanted = parse_range(range_header, size)
    except ApiError:
        source.close()
        raise
    if wanted is None:
        response = stream_file(source, name)
        response.headers["Accept-Ranges"] = "bytes"
        return response
    first, last = wanted

    def chunks() -> Iterator[bytes]:
        offset, left = first, last - first + 1
        try:
            while left > 0:
                chunk = os.pread(source.fileno(), min(_CHUNK, left), offset)
                if not chunk:
                    break  # the file shrank meanwhile: send what there is
                offset += len(chunk)
                left -= len(chunk)
                yield chunk
        finally:
            source.close()

    # The headers of the whole file (server_files.stream_file), for this part of it.
    headers = {
        "Content-Range": f"bytes {first}-{last}/{size}", "Content-Length": str(last - first + 1),
        "Accept-Ranges": "bytes", "Content-Disposition": content_disposition(os.path.basename(name)),
        "Cache-Control": "private, max-age=3600", "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return StreamingResponse(chunks(), status_code=206, headers=headers,
                             media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
