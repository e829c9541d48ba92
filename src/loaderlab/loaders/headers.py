"""What an image file's first and last bytes tell before any decode: its size, and whether it is whole."""

from __future__ import annotations

import numpy as np

# JPEG frame headers (SOF0-SOF15 but DHT, JPG and DAC), which hold the image's height and width.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # markers with no length field: TEM, RST0-7
_JPEG, _PNG, _BMP, _GIF = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", (b"GIF87a", b"GIF89a")
TAIL_BYTES = 1024  # bytes from the end in which a JPEG's or PNG's end marker is looked for


def jpeg_size(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header in `data`; None if it is not a JPEG or has none."""
    view = memoryview(data).cast("B")  # indexing a memoryview gives ints, without NumPy scalars
    end = len(view)
    if end < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= end:
        if view[i] != 0xFF:
            return None  # lost sync: not a marker where one must be
        marker = view[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # scan data or end of image before any frame header
            return None
        if marker in _SOF:
            if i + 9 > end:
                return None
            height = view[i + 5] << 8 | view[i + 6]
            width = view[i + 7] << 8 | view[i + 8]
            return (height, width) if height and width else None  # height 0: set later by a DNL marker
        i += 2 + (view[i + 2] << 8 | view[i + 3])  # skip the segment: its length counts its own 2 bytes
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG, PNG, BMP or GIF header (GIF: its canvas); None if none is found."""
    if data.startswith(_PNG) and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data.startswith(_BMP) and len(data) >= 26:
        width, height = (abs(int.from_bytes(data[k : k + 4], "little", signed=True)) for k in (18, 22))
        return height, width
    if data.startswith(_GIF) and len(data) >= 10:
        return int.from_bytes(data[8:10], "little"), int.from_bytes(data[6:8], "little")
    return jpeg_size(data)


def image_verdict(head: bytes, tail: bytes, size: int) -> str | None:
    """Why a file cannot be a good image, from its first 16 and last TAIL_BYTES bytes; None if fine."""
    if size == 0:
        return "file is empty (0 bytes)"
    if head.startswith(_JPEG):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head.startswith(_BMP):
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size else f"truncated BMP ({size} of {declared} bytes)"
    if head.startswith(_GIF):
        return None if tail.rstrip(b"\0").endswith(b";") else "truncated GIF (no trailer)"
    return "not a JPEG, PNG, BMP or GIF file (unknown header)"
