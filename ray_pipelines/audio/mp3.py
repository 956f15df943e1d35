"""Whether an MP3 states its length, and whether what it states is the file's.

An MP3 is a run of frames with no length in any header unless its first frame is a Xing/Info (LAME,
FFmpeg) or VBRI (Fraunhofer) frame counting them. Without one, libsndfile (mpg123) estimates the length
from the file's size and the first frame's bitrate: an MP3 from an older encoder, a stream rip or
``ffmpeg -write_xing 0`` decodes to a few frames more or fewer than it said, and reading up to the length
it said was "truncated".

With one, libsndfile stops where it counts, even where more frames follow: MP3s joined by ``cat`` (an
audiobook's chapters, a DJ set) keep the first file's count, and libsndfile read the first file alone,
without an error. The frame also gives the stream's size in bytes; frames (or another MP3's tag) right
where that size ends mean the count is not the file's.
"""

from __future__ import annotations

import enum
from typing import BinaryIO

ID3_HEADER = 10
ID3V1_SIZE = 128  # a tag at the end of a file: "TAG" and its fields
FRAMES_SLACK = 4096  # more than two of the largest Layer III frames (320 kbit/s at 32 kHz: 1,441 bytes)
# Bytes read after an ID3v2 tag to find the first frame (junk before it included) and its tag.
FIRST_FRAME_SEARCH = 8192
LENGTH_TAGS = (b"Xing", b"Info")
VBRI_OFFSET = 4 + 32  # after the frame header, always


class Length(enum.Enum):
    STATED = "stated"  # a Xing/Info or VBRI frame counts the frames, and the file ends with them
    NOT_STATED = "not stated"  # libsndfile's length is an estimate from the file's size
    UNDERSTATED = "understated"  # more frames follow those counted: libsndfile would stop at the count


def stated_length(file: BinaryIO, size: int) -> Length:
    """What the MP3 of ``size`` bytes read from ``file`` (at its start, seekable) says of its length."""
    head = file.read(ID3_HEADER)
    data_at = 0  # where ``data`` starts in the file
    if head[:3] == b"ID3" and len(head) == ID3_HEADER:
        data_at = _id3_size(head)
        file.seek(data_at)
        head = b""
    data = head + file.read(FIRST_FRAME_SEARCH)
    at = _first_frame(data)
    if at < 0:
        return Length.NOT_STATED
    vbri_at = at + VBRI_OFFSET
    tag_at = at + 4 + _side_info_size(data[at + 1], data[at + 3])
    if data[vbri_at : vbri_at + 4] == b"VBRI":
        stream_bytes = _uint32(data, vbri_at + 10)  # after the version, delay and quality
    elif data[tag_at : tag_at + 4] in LENGTH_TAGS:
        flags = _uint32(data, tag_at + 4) or 0
        stream_bytes = _uint32(data, tag_at + 8 + (4 if flags & 1 else 0)) if flags & 2 else None
    else:
        return Length.NOT_STATED
    end = data_at + at + (stream_bytes or size)  # the frames' bytes count from the first frame's start
    # Read only where more than a tag and a frame or two (an encoder that leaves its own frame out of the
    # count) follow: a file's tail costs a request on an object store.
    if size - end > ID3V1_SIZE + FRAMES_SLACK:
        file.seek(end)
        after = file.read(4)
        if after[:3] == b"TAG":  # the first file's ID3v1 tag: what follows it
            file.seek(ID3V1_SIZE - 4, 1)
            after = file.read(4)
        if after[:3] == b"ID3" or _is_frame_header(after):
            return Length.UNDERSTATED
    return Length.STATED


def _uint32(data: bytes, at: int) -> int | None:
    return int.from_bytes(data[at : at + 4], "big") if len(data) >= at + 4 else None


def _id3_size(header: bytes) -> int:
    """An ID3v2 tag's whole size: its header, the syncsafe size, and a footer where the flags say so."""
    size = (header[6] & 0x7F) << 21 | (header[7] & 0x7F) << 14 | (header[8] & 0x7F) << 7 | (header[9] & 0x7F)
    footer = ID3_HEADER if header[5] & 0x10 else 0
    return ID3_HEADER + size + footer


def _first_frame(data: bytes) -> int:
    """Where the first Layer III frame header starts (11 sync bits, a known version, layer III), or -1."""
    at = data.find(b"\xff")
    while 0 <= at < len(data) - 4:
        if _layer3_sync(data[at + 1]):
            return at
        at = data.find(b"\xff", at + 1)
    return -1


def _layer3_sync(second: int) -> bool:
    """A frame header's second byte, after its 0xFF: the last 3 sync bits, a known version, layer III."""
    return second & 0xE0 == 0xE0 and (second >> 3) & 3 != 1 and (second >> 1) & 3 == 1


def _is_frame_header(data: bytes) -> bool:
    """Whether ``data`` opens with a Layer III frame header whose bitrate and sample rate are valid."""
    return (
        len(data) >= 4
        and data[0] == 0xFF
        and _layer3_sync(data[1])
        and (data[2] >> 4) not in (0, 15)  # free-format or a bad bitrate
        and (data[2] >> 2) & 3 != 3  # a reserved sample rate
    )


def _side_info_size(second: int, fourth: int) -> int:
    """Layer III side information's size, after which a Xing/Info tag sits: MPEG-1 32 bytes (17 mono),
    MPEG-2 and 2.5 17 (9 mono)."""
    mpeg1 = (second >> 3) & 3 == 3
    mono = (fourth >> 6) & 3 == 3
    if mpeg1:
        return 17 if mono else 32
    return 9 if mono else 17


# The bit reservoir: a Layer III frame's main data may begin up to this many bytes before the frame, in the
# frames before it (MPEG-1's 9-bit main_data_begin; MPEG-2 and 2.5 have 8 bits).
RESERVOIR_BYTES = {1: 511, 2: 255}
LOWEST_BITRATE = {1: 32000, 2: 8000}  # a frame's smallest size is at the lowest bitrate
SAMPLES_PER_FRAME = {1: 1152, 2: 576}
SLOTS_PER_SAMPLE = {1: 144, 2: 72}  # a frame's bytes: this times its bitrate over its sample rate
STEREO_SIDE_INFO = {1: 32, 2: 17}
FRAME_HEADER = 4


def seek_preroll(sample_rate: int) -> int:
    """Samples to decode before a seek target so that the target's samples are exact.

    After a seek, libsndfile's decoder (mpg123) decodes from a frame or so before the target; where a
    frame's main data begins further back, in the bit reservoir of frames it did not read, the first
    samples it gives are wrong (measured: up to 82 frames of a 24 kHz stream at 8 kbit/s, 5 of a 44.1 kHz
    VBR file's quiet passages; 0.27-0.60 of full scale off). Reading on from this many samples earlier
    covers the furthest the reservoir can reach (its size over the main data of the smallest frames:
    the lowest bitrate, stereo side information; a CRC's 2 bytes not counted) and two frames more (the
    overlap with the frame before, the decoder's own start). 10 frames at 44.1 kHz, 87 at 24 kHz."""
    version = 1 if sample_rate >= 32000 else 2  # MPEG-2 and 2.5 have the same frames
    smallest = SLOTS_PER_SAMPLE[version] * LOWEST_BITRATE[version] // sample_rate
    main_data = smallest - FRAME_HEADER - STEREO_SIDE_INFO[version]
    frames_back = -(-RESERVOIR_BYTES[version] // main_data)
    return (frames_back + 2) * SAMPLES_PER_FRAME[version]
