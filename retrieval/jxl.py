"""Read a JPEG XL file's pixel size from its header, without decoding it.

pillow-jxl-plugin decodes the whole image inside ``Image.open``, so the
pixel limit that guards every other format (checked after ``Image.open``
parsed only the header) would come too late: a few-KB file that claims
60000x60000 pixels would allocate gigabytes first. The size sits in the
codestream's SizeHeader (ISO/IEC 18181-1, section A.2), a handful of bits.
"""

from __future__ import annotations

import struct

CODESTREAM_SIGNATURE = b"\xff\x0a"
CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
# ratio field 1..7: xsize = ysize * num // den
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class _Bits:
    """JPEG XL's bit reader: least significant bit of each byte first."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.data[self.pos >> 3]  # IndexError on truncated data
            value |= ((byte >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32_size(self) -> int:
        """U32(Bits(9), Bits(13), Bits(18), Bits(30)) + 1, the SizeHeader's distribution."""
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1


def _size_from_codestream(stream: bytes) -> tuple[int, int] | None:
    if not stream.startswith(CODESTREAM_SIGNATURE):
        return None
    bits = _Bits(stream[2:])
    try:
        small = bits.read(1)
        height = (bits.read(5) + 1) * 8 if small else bits.u32_size()
        ratio = bits.read(3)
        if ratio:
            num, den = _RATIOS[ratio]
            width = height * num // den
        else:
            width = (bits.read(5) + 1) * 8 if small else bits.u32_size()
    except IndexError:
        return None
    return width, height


def _codestream_start(container: bytes) -> bytes | None:
    """The first bytes of the codestream inside an ISO-BMFF container (``jxlc``, or the first ``jxlp``)."""
    pos = 0
    while pos + 8 <= len(container):
        size, kind = struct.unpack(">I4s", container[pos:pos + 8])
        header = 8
        if size == 1:  # 64-bit size follows
            if pos + 16 > len(container):
                return None
            size = struct.unpack(">Q", container[pos + 8:pos + 16])[0]
            header = 16
        body = container[pos + header:pos + size] if size else container[pos + header:]
        if kind == b"jxlc":
            return body
        if kind == b"jxlp":
            return body[4:]  # a 4-byte part index precedes the data
        if size == 0 or size < header:
            return None
        pos += size
    return None


def jpeg_xl_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG XL file from its first bytes, or None when they don't say."""
    if head.startswith(CODESTREAM_SIGNATURE):
        return _size_from_codestream(head)
    if head.startswith(CONTAINER_SIGNATURE):
        stream = _codestream_start(head)
        return _size_from_codestream(stream) if stream else None
    return None
