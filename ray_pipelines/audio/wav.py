"""Where a WAV's samples start: for a WAV whose recorder never wrote its lengths.

A recorder writes a WAV's header first, with both lengths (the RIFF chunk's and the data chunk's) 0,
and fills them in when it stops; after a crash or a pulled card they stay 0, and libsndfile, which
believes them, finds no frames. The samples are all there, from the data chunk's header to the end of
the file, and as plain PCM they read as raw samples, a window at a time, as any WAV does.
"""

from __future__ import annotations

from typing import BinaryIO

# Bytes per sample of the PCM encodings libsndfile names (a compressed WAV, ADPCM or GSM, is not raw).
SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
SAMPLE_BYTES |= {"ULAW": 1, "ALAW": 1}
HEAD_BYTES = 65536  # the chunks before the samples (fmt, fact, LIST, bext) fit in far less


def samples_offset(file: BinaryIO) -> int:
    """Where the samples of the little-endian RIFF/WAVE file read from ``file`` (at its start) begin,
    just after its data chunk's header; -1 where its first 64 KiB hold no data chunk."""
    head = file.read(HEAD_BYTES)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return -1
    at = 12
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"data":
            return at + 8
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return -1
