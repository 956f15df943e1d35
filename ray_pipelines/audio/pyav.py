"""FFmpeg's decode of a whole stream, through PyAV.

For what libsndfile cannot read (AAC, AC-3, WebM, WavPack, ...) and for files whose length libsndfile
gets wrong (an MP3 that does not state it, MP3s joined end to end, a chained Ogg, a FLAC without its
length). FFmpeg cannot seek to a sample exactly in every format, so the stream is decoded once, from
its start, at its native rate and channels (the first frame's: where they change, as in MP3s of two
rates joined, FFmpeg converts the later frames to them).

The samples are held once, in a buffer sized from the container's duration; past ``SPILL_BYTES`` they
go to a temporary file of float32 frames instead, which libsndfile reads a window at a time as raw
samples (the same values), so an audiobook of many hours does not have to fit in a worker's memory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

SPILL_BYTES = 256 * 2**20  # samples held in memory at most: 25 minutes of 44.1 kHz stereo
FRAMES_PER_WRITE = 2**20  # the memory buffer's frames go to the spill file this many at a time
SPILL_PREFIX = "ray-pipelines-decoded-"


class NoAudio(Exception):
    """The stream has no audio to decode."""


@dataclass
class Decoded:
    """A stream decoded whole: its frames in memory (``samples``, ``[C, frames]`` float32) or in a
    temporary file that ``spilled`` reads (close it when done)."""

    sample_rate: int
    channels: int
    frames: int
    samples: np.ndarray | None = None
    spilled: sf.SoundFile | None = None
    spill_file: BinaryIO | None = None

    def close(self) -> None:
        if self.spilled is not None:
            self.spilled.close()
        if self.spill_file is not None:
            self.spill_file.close()  # a temporary file: gone with it


def decode_all(stream: Any) -> Decoded:
    """Every frame of the first audio stream of ``stream`` (a path or a file object)."""
    import av  # imported lazily: only the files above need it

    samples, resampler, settings, first = None, None, None, None
    try:
        with av.open(stream, mode="r") as container:
            if not container.streams.audio:
                raise NoAudio("no audio stream")
            for frame in _frames(container, container.streams.audio[0]):
                if (frame.format.name, frame.layout.name, frame.sample_rate) != settings:
                    if resampler is not None:
                        samples.extend(_drained(resampler))
                    settings = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if first is None:
                        first = (frame.layout, frame.sample_rate)
                        samples = _Samples(
                            len(frame.layout.channels),
                            _expected_frames(container, frame.sample_rate),
                            SPILL_BYTES,
                        )
                    resampler = av.AudioResampler(format="fltp", layout=first[0], rate=first[1])
                samples.extend(out.to_ndarray() for out in resampler.resample(frame))
            if resampler is not None:
                samples.extend(_drained(resampler))
        if samples is None or not samples.frames:
            raise NoAudio("no audio frames decoded")
        return samples.decoded(int(first[1]))
    except BaseException:
        if samples is not None:
            samples.discard()  # a temporary file, where it had spilled
        raise


def _frames(container, stream):
    """The stream's decoded frames; a packet the decoder refuses is passed over, as the ``ffmpeg`` command
    does (an MP3 joined from two encoders' files: the second's first frame, where they meet), where
    PyAV's ``container.decode`` raised and the whole file was lost."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _drained(resampler) -> list[np.ndarray]:
    """What a PyAV resampler still holds."""
    return [out.to_ndarray() for out in resampler.resample(None)]


def _expected_frames(container, sample_rate: int) -> int:
    """Frames a container says it holds (its duration, in microseconds), with a margin; 0 where unknown."""
    seconds = (container.duration or 0) / 1_000_000
    return int(seconds * sample_rate * 1.01) + sample_rate if seconds > 0 else 0


class _Samples:
    """Decoded frames ``[C, n]`` appended into one float32 buffer (grown by half where the container's
    duration was short: MP3s joined end to end give the first one's), or, past ``spill_bytes``, written
    to a temporary file as interleaved float32 frames. A list of chunks and their concatenation held
    the samples twice: a 10-minute stereo m4a peaked at 512 MB, 230 MB of it samples."""

    def __init__(self, channels: int, expected_frames: int, spill_bytes: int):
        self.channels = channels
        self._limit = max(1, spill_bytes // (4 * channels))  # frames held in memory at most
        self._buffer = np.empty((channels, min(max(expected_frames, 1), self._limit)), np.float32)
        self._file: BinaryIO | None = None
        self.frames = 0

    def extend(self, chunks) -> None:
        for chunk in chunks:
            n = chunk.shape[1]
            if self._file is None and self.frames + n > self._limit:
                self._spill()
            if self._file is not None:
                self._file.write(np.ascontiguousarray(chunk.T, dtype="<f4"))
            else:
                if self.frames + n > self._buffer.shape[1]:
                    size = min(max(self.frames + n, self._buffer.shape[1] * 3 // 2), self._limit)
                    grown = np.empty((self.channels, size), np.float32)
                    grown[:, : self.frames] = self._buffer[:, : self.frames]
                    self._buffer = grown
                self._buffer[:, self.frames : self.frames + n] = chunk
            self.frames += n

    def _spill(self) -> None:
        self._file = tempfile.TemporaryFile(prefix=SPILL_PREFIX)
        for start in range(0, self.frames, FRAMES_PER_WRITE):
            part = self._buffer[:, start : min(start + FRAMES_PER_WRITE, self.frames)]
            self._file.write(np.ascontiguousarray(part.T, dtype="<f4"))
        self._buffer = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()

    def decoded(self, sample_rate: int) -> Decoded:
        if self._file is None:  # a view of the buffer: rows a buffer's length apart
            return Decoded(sample_rate, self.channels, self.frames, samples=self._buffer[:, : self.frames])
        self._file.flush()
        self._file.seek(0)
        spilled = sf.SoundFile(
            self._file, samplerate=sample_rate, channels=self.channels, subtype="FLOAT", endian="LITTLE", format="RAW"
        )
        return Decoded(sample_rate, self.channels, self.frames, spilled=spilled, spill_file=self._file)
