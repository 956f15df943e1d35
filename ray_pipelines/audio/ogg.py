"""Whether an Ogg file chains several streams, whether it ends whole, and where seeks in it are exact.

An Ogg file may hold its streams one after another (a chained file: an internet radio recording with a
stream per track, Ogg files joined by ``cat``). libsndfile reads the first stream alone, without an
error, and gives the first stream's length. Each Ogg page names its stream by a serial number: a file
whose last page is not of its first page's stream chains another one (or carries another beside it,
such as video, which FFmpeg reads past as well).

A stream's last page carries the end-of-stream flag: a file cut short (a copy that stopped) ends inside
a page or after a page without it, and libsndfile read it as a whole, shorter file. libsndfile's seeks
into the samples of the last page gave shifted samples: ``stream_end`` also says how many samples the
last page holds, and reads seek to before them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

OGG_MAGIC = b"OggS"
FLAGS_AT, GRANULE_AT = 5, 6
SERIAL_AT = 14  # in a page header: "OggS", version, flags, granule position (8), then the serial (4)
SEGMENTS_AT = 26  # the number of lacing values (segment sizes) that follow the header
END_OF_STREAM = 0x04
NO_GRANULE = -1  # a page on which no packet ends
OPUS_GRANULE_RATE = 48000  # an Opus stream counts its granule positions at 48 kHz, whatever it decodes to
PAGE_HEADER = 27
# The tail read for the last page: most pages are a few KiB; the largest one (255 segments of 255 bytes)
# is read where the shorter tail holds no page start.
TAIL_GUESS = 16384
LARGEST_PAGE = PAGE_HEADER + 255 + 255 * 255


def chains_streams(file: BinaryIO, size: int, end: End | None = None) -> bool:
    """Whether the Ogg file of ``size`` bytes read from ``file`` (at its start, seekable) ends in a
    stream other than the one it starts with (``end``: its :func:`stream_end`, whose last page is the
    file's, read already: then only its first page is read)."""
    head = file.read(PAGE_HEADER)
    if len(head) < PAGE_HEADER or head[:4] != OGG_MAGIC:
        return False
    if end is not None:
        return end.last_serial != head[SERIAL_AT : SERIAL_AT + 4]
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


@dataclass(frozen=True)
class End:
    """How an Ogg file ends: whether its bytes end with a whole page (``whole_page``), whether that page
    ends its stream (``end_of_stream``), and how many granule positions the last page adds to the page of
    its stream before it that has one (its samples; None where the tail read holds no such page), and the
    serial number of the stream of the last whole page."""

    whole_page: bool
    end_of_stream: bool
    last_page_granules: int | None
    last_serial: bytes


def stream_end(file: BinaryIO, size: int) -> End | None:
    """How the Ogg file of ``size`` bytes read from ``file`` (seekable) ends; None where its tail holds no
    run of pages (not Ogg, or pages larger than any Ogg page)."""
    for tail_bytes in (TAIL_GUESS, 2 * LARGEST_PAGE):
        tail_at = max(0, size - tail_bytes)
        file.seek(tail_at)
        tail = file.read(size - tail_at)
        at = tail.find(OGG_MAGIC)
        while at >= 0:
            headers, after = _pages_from(tail, at)
            rest = tail[after : after + len(OGG_MAGIC)]
            # pages that run to the end, or to a page the file cuts (a match inside a packet is no page)
            if headers and rest == OGG_MAGIC[: len(rest)]:
                last = headers[-1]
                return End(
                    whole_page=after == len(tail),
                    end_of_stream=bool(last[FLAGS_AT] & END_OF_STREAM),
                    last_page_granules=_granules_added(headers),
                    last_serial=last[SERIAL_AT : SERIAL_AT + 4],
                )
            at = tail.find(OGG_MAGIC, at + 1)
        if tail_at == 0:
            break
    return None


def _pages_from(tail: bytes, at: int) -> tuple[list[bytes], int]:
    """The headers of the whole pages that follow one another from ``at`` in ``tail``, and the offset
    after the last of them."""
    headers = []
    while at + PAGE_HEADER <= len(tail) and tail[at : at + 4] == OGG_MAGIC and tail[at + 4] == 0:
        segments = tail[at + SEGMENTS_AT]
        lacing = tail[at + PAGE_HEADER : at + PAGE_HEADER + segments]
        end = at + PAGE_HEADER + segments + sum(lacing)
        if len(lacing) < segments or end > len(tail):
            break
        headers.append(tail[at : at + PAGE_HEADER])
        at = end
    return headers, at


def _granules_added(headers: list[bytes]) -> int | None:
    """The granule positions the last of ``headers`` adds to the one before it of its stream that has one."""
    granule = _granule(headers[-1])
    serial = headers[-1][SERIAL_AT : SERIAL_AT + 4]
    if granule == NO_GRANULE:
        return None
    for header in reversed(headers[:-1]):
        if header[SERIAL_AT : SERIAL_AT + 4] == serial and _granule(header) != NO_GRANULE:
            return granule - _granule(header)
    return None


def _granule(header: bytes) -> int:
    return int.from_bytes(header[GRANULE_AT : GRANULE_AT + 8], "little", signed=True)
