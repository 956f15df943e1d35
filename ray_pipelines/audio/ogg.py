"""Whether an Ogg file chains several streams.

An Ogg file may hold its streams one after another (a chained file: an internet radio recording with a
stream per track, Ogg files joined by ``cat``). libsndfile reads the first stream alone, without an
error, and gives the first stream's length. Each Ogg page names its stream by a serial number: a file
whose last page is not of its first page's stream chains another one (or carries another beside it,
such as video, which FFmpeg reads past as well).
"""

from __future__ import annotations

from typing import BinaryIO

OGG_MAGIC = b"OggS"
SERIAL_AT = 14  # in a page header: "OggS", version, flags, granule position (8), then the serial (4)
PAGE_HEADER = 27
# The tail read for the last page: most pages are a few KiB; the largest one (255 segments of 255 bytes)
# is read where the shorter tail holds no page start.
TAIL_GUESS = 16384
LARGEST_PAGE = PAGE_HEADER + 255 + 255 * 255


def chains_streams(file: BinaryIO, size: int) -> bool:
    """Whether the Ogg file of ``size`` bytes read from ``file`` (at its start, seekable) ends in a
    stream other than the one it starts with."""
    head = file.read(PAGE_HEADER)
    if len(head) < PAGE_HEADER or head[:4] != OGG_MAGIC:
        return False
    for tail_bytes in (TAIL_GUESS, LARGEST_PAGE):
        tail_at = max(0, size - tail_bytes)
        file.seek(tail_at)
        last = _last_page(file.read(size - tail_at))
        if last is not None:
            return last[SERIAL_AT : SERIAL_AT + 4] != head[SERIAL_AT : SERIAL_AT + 4]
        if tail_at == 0:
            break
    return False


def _last_page(tail: bytes) -> bytes | None:
    """The header of the last page that starts in ``tail`` (magic and version 0), or None."""
    at = tail.rfind(OGG_MAGIC)
    while at >= 0:
        if len(tail) >= at + PAGE_HEADER and tail[at + 4] == 0:
            return tail[at : at + PAGE_HEADER]
        at = tail.rfind(OGG_MAGIC, 0, at)
    return None
