"""Where a WAV's samples are, for a WAV whose header does not say.

A recorder writes a WAV's header first, with both lengths (the RIFF chunk's and the data chunk's) 0,
and fills them in when it stops; after a crash or a pulled card they stay 0, and libsndfile, which
believes them, finds no frames. The samples are all there, from the data chunk's header to the end of
the file, and as plain PCM they read as raw samples, a window at a time, as any WAV does.

A WAV's lengths are 32-bit: a plain WAV of 4 GiB of samples or more (a day of 48 kHz field recording;
FFmpeg writes one unless asked for RF64) holds its data length modulo 4 GiB, and libsndfile read that
much, the first hours of a recording of many, without an error.
"""

from __future__ import annotations

from typing import BinaryIO

# Bytes per sample of the PCM encodings libsndfile names (a compressed WAV, ADPCM or GSM, is not raw).
SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
SAMPLE_BYTES |= {"ULAW": 1, "ALAW": 1}
HEAD_BYTES = 65536  # the chunks before the samples (fmt, fact, LIST, bext) fit in far less


WRAP = 2**32  # a length field's range
# Data lengths that say "unknown", written by what cannot seek back to its header (a writer to a pipe):
# sox's 0x7FFFF000, arecord's and others' up to 0xFFFFFFFF (FFmpeg's); and 0, a recorder stopped before it
# wrote the length. Such a file holds fewer bytes than its length says, and is read to its end.
UNKNOWN_LENGTHS_FROM = 0x7FFFF000


# Bytes of one sample of libsndfile's WAV subtypes whose frames are whole samples (block formats such as
# ADPCM are left out: their data is judged in bytes).
SAMPLE_BYTES = {
    **{"PCM_U8": 1, "PCM_S8": 1, "ULAW": 1, "ALAW": 1},
    **{"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8},
}


def states_length(stated: int) -> bool:
    """Whether a data chunk's length ``stated`` is the samples' length, not a writer's "unknown"."""
    return 0 < stated < UNKNOWN_LENGTHS_FROM


def data_chunk(file: BinaryIO) -> tuple[int, int]:
    """Where the samples of the little-endian RIFF/WAVE file read from ``file`` (at its start) begin,
    just after its data chunk's header, and the length that header gives; (-1, 0) where its first
    64 KiB hold no data chunk."""
    head = file.read(HEAD_BYTES)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return -1, 0
    at = 12
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"data":
            return at + 8, size
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return -1, 0


def unwrapped_length(offset: int, stated: int, file_size: int) -> int:
    """The data length of a WAV whose samples start at ``offset`` and whose header says ``stated``:
    ``stated`` plus as many times 4 GiB as the file holds (chunks after the samples are far smaller)."""
    return stated + max(0, (file_size - offset - stated) // WRAP) * WRAP
