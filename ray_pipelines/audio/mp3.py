"""Whether an MP3 states its length.

An MP3 is a run of frames with no length in any header unless its first frame is a Xing/Info (LAME,
FFmpeg) or VBRI (Fraunhofer) frame counting them. Without one, libsndfile (mpg123) estimates the length
from the file's size and the first frame's bitrate: an MP3 from an older encoder, a stream rip or
``ffmpeg -write_xing 0`` decodes to a few frames more or fewer than it said, and reading up to the length
it said was "truncated".
"""

from __future__ import annotations

from typing import BinaryIO

ID3_HEADER = 10
# Bytes read after an ID3v2 tag to find the first frame (junk before it included) and its tag.
FIRST_FRAME_SEARCH = 8192
LENGTH_TAGS = (b"Xing", b"Info")
VBRI_OFFSET = 4 + 32  # after the frame header, always


def states_its_length(file: BinaryIO) -> bool:
    """Whether the MP3 read from ``file`` (at its start) opens with a Xing/Info or VBRI frame."""
    head = file.read(ID3_HEADER)
    skip = 0
    if head[:3] == b"ID3" and len(head) == ID3_HEADER:
        skip = _id3_size(head) - ID3_HEADER
    if skip:
        file.seek(skip, 1)
        head = b""
    data = head + file.read(FIRST_FRAME_SEARCH)
    at = _first_frame(data)
    if at < 0:
        return False
    if data[at + VBRI_OFFSET : at + VBRI_OFFSET + 4] == b"VBRI":
        return True
    tag_at = at + 4 + _side_info_size(data[at + 1], data[at + 3])
    return data[tag_at : tag_at + 4] in LENGTH_TAGS


def _id3_size(header: bytes) -> int:
    """An ID3v2 tag's whole size: its header, the syncsafe size, and a footer where the flags say so."""
    size = (header[6] & 0x7F) << 21 | (header[7] & 0x7F) << 14 | (header[8] & 0x7F) << 7 | (header[9] & 0x7F)
    footer = ID3_HEADER if header[5] & 0x10 else 0
    return ID3_HEADER + size + footer


def _first_frame(data: bytes) -> int:
    """Where the first Layer III frame header starts (11 sync bits, a known version, layer III), or -1."""
    at = data.find(b"\xff")
    while 0 <= at < len(data) - 4:
        second = data[at + 1]
        if second & 0xE0 == 0xE0 and (second >> 3) & 3 != 1 and (second >> 1) & 3 == 1:
            return at
        at = data.find(b"\xff", at + 1)
    return -1


def _side_info_size(second: int, fourth: int) -> int:
    """Layer III side information's size, after which a Xing/Info tag sits: MPEG-1 32 bytes (17 mono),
    MPEG-2 and 2.5 17 (9 mono)."""
    mpeg1 = (second >> 3) & 3 == 3
    mono = (fourth >> 6) & 3 == 3
    if mpeg1:
        return 17 if mono else 32
    return 9 if mono else 17
