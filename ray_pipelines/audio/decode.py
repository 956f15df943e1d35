"""Decode windows of audio files without decoding whole files.

``AudioFile`` opens an input (a local path, any fsspec URL, or a member of a
tar shard given by its byte range) with soundfile (libsndfile: WAV, FLAC,
OGG, MP3, ...) and falls back to PyAV (FFmpeg: m4a/aac, opus, ...) for what
libsndfile cannot read; FLAC goes to libFLAC directly when it is installed
(``flac.py``: the same samples in a fifth less time). ``read(start, n)``
seeks to the window, so a 3 s crop of a one-hour file reads a few seconds of
it (object stores serve it with range requests).

Every failure raises :class:`DecodeError` with a short reason that ends up
in the job's error rows.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from ..storage import get_fs, is_local, storage_errors
from . import flac, mp3, ogg, pyav, wav

# libsndfile's frame count for a stream whose header gives none (SF_COUNT_MAX, 2^63 - 1).
UNKNOWN_LENGTH = 2**62


class DecodeError(Exception):
    """An input that cannot become audio; ``str(e)`` is the reason recorded."""


# Reasons that may heal by themselves (storage hiccups, a file still uploading, a GPU out of memory):
# such inputs are retried on the next run instead of being committed as failed.
DEVICE_FAULT = "device:"  # a model's call failed for the device's sake (stages/rows.model_failure)
RETRYABLE_PREFIXES = ("unreadable:", "missing:", "lost:", DEVICE_FAULT)


def is_retryable(reason: str) -> bool:
    return reason.startswith(RETRYABLE_PREFIXES)


def open_failure(error: Exception) -> str:
    """The reason recorded for an input that could not be opened. A missing file or a storage
    error may heal (retryable); a symlink loop or a directory never does (final, or every run would retry it)."""
    if isinstance(error, FileNotFoundError):
        return "missing: file not found"
    if isinstance(error, IsADirectoryError):
        return f"not a file: {error.filename or ''} is a directory"
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return f"symlink loop: {error.filename or ''} ({error.strerror})"
    return f"unreadable: {type(error).__name__}: {error}"


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of ``[offset, offset + size)`` of a file (a tar member)."""

    def __init__(self, raw, offset: int, size: int):
        self._raw, self._offset, self._size, self._pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = min(max(0, base + pos), self._size)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        remaining = self._size - self._pos
        n = remaining if n is None or n < 0 else min(n, remaining)
        if n <= 0:
            return b""
        self._raw.seek(self._offset + self._pos)
        data = self._raw.read(n)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _KeepsStorageErrors(io.RawIOBase):
    """A store's file whose read and seek errors (a connection that drops after s3fs's own retries) are
    kept, and read as the end of the file. libsndfile took such a failed read for the end anyway
    (`truncated: ...`) and FFmpeg gave its own message, which committed a storage hiccup as a corrupt
    file, never tried again; ``error`` now tells the decoder the input is `unreadable:` (retried on the
    next run). Kept rather than raised: through libsndfile's callbacks an exception is only printed.
    Only the store's errors (``storage_errors``): what will not heal by itself, such as an HTTP server
    without range requests (fsspec's ``ValueError``), is raised as before, and stays final."""

    def __init__(self, file):
        self._file, self.error = file, None

    def _keep(self, error: Exception) -> None:
        self.error = self.error or error

    # Each call written out: an MP3 window makes thousands of small reads (a call more cost 10 %).
    def read(self, n: int = -1) -> bytes:
        try:
            return self._file.read(n)
        except storage_errors() as e:
            self._keep(e)
            return b""

    def readinto(self, buffer) -> int:
        try:
            return self._file.readinto(buffer)
        except storage_errors() as e:
            self._keep(e)
            return 0

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._file.seek(pos, whence)
        except storage_errors() as e:
            self._keep(e)
            return self._file.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class InputAudio:
    """Where an input's bytes are: a URL, and for tar members their byte range."""

    uri: str
    size: int = -1
    member_offset: int = -1

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> InputAudio:
        return cls(uri=str(row["uri"]), size=int(row.get("size", -1)), member_offset=int(row.get("member_offset", -1)))


class AudioFile:
    """An open audio input. Use as a context manager.

    ``sample_rate``, ``frames`` (per channel, at the native rate) and ``channels`` come from the header,
    or from FFmpeg's decode where the header's length is not the file's; ``size`` is the input's bytes;
    ``read`` returns float32 ``[C, n]``.
    """

    def __init__(self, source: InputAudio, storage_options: dict[str, Any] | None = None):
        self.source = source
        self._raw = None
        self._local_path: str | None = None
        self._sf: sf.SoundFile | None = None
        self._flac: flac.FlacReader | None = None
        self._decoded: np.ndarray | None = None  # the whole file in memory: PyAV's formats, decode_whole()
        self._pyav: pyav.Decoded | None = None  # PyAV's decode, whose temporary file close() removes
        self.backend = ""
        # How libsndfile's MP3 and Ogg decoders seek to give exact samples (``_seek_target``): this many
        # samples before the window, at most to the second (None: anywhere), from the file's start.
        self._seek_preroll, self._last_exact_seek, self._seek_from_start = 0, None, False
        try:
            fs, path = get_fs(source.uri, storage_options)
            self._raw = fs.open(path, "rb")
            # A local file is handed to libsndfile / FFmpeg by name: they read it in C. Through a
            # Python file object every small read of the decoder is a Python call (an MP3 window
            # made thousands: a fifth of its decode time).
            self._local_path = path if is_local(fs) and source.member_offset < 0 else None
            if not is_local(fs):
                if source.size < 0:  # (a listing that had no size for it)
                    self._raw = _seekable(self._raw)
                self._raw = _KeepsStorageErrors(self._raw)
            # The input's bytes: the listing's size, else (an AudioFile opened by hand) the file's own.
            self.size = source.size if source.size >= 0 else self._raw.seek(0, io.SEEK_END)
        except Exception as e:  # missing, network or permission errors: retryable on a later run
            raise DecodeError(open_failure(e)) from None
        try:
            try:
                self._open()
            except DecodeError:
                if not self._storage_failure():
                    raise
            failure = self._storage_failure()  # a failed read the decoders took for the end, or for bad data
            if failure:
                raise DecodeError(failure) from None
        except BaseException:
            self.close()
            raise

    def _stream(self):
        if self._local_path is not None:
            return self._local_path
        if self.source.member_offset >= 0:
            return _RangeFile(self._raw, self.source.member_offset, self.size)
        self._raw.seek(0)
        return self._raw

    def _open(self) -> None:
        if self.size == 0:
            raise DecodeError("empty file (0 bytes)")
        if flac.available() and self._starts_with(flac.FLAC_MAGIC):
            try:
                self._flac = flac.FlacReader(self._stream(), self.size)
            except flac.FlacError:
                pass  # an unusual FLAC (no length in its header, ...): libsndfile reads it or says why
            else:
                self.backend = "libflac"
                self.sample_rate, self.channels = self._flac.sample_rate, self._flac.channels
                self.frames = self._flac.frames
                return
        try:
            self._sf = sf.SoundFile(self._stream())
            self.backend = "soundfile"
            self.sample_rate = int(self._sf.samplerate)
            self.frames = int(self._sf.frames)
            self.channels = int(self._sf.channels)
        except Exception as sf_error:
            self._sf = None
            try:
                self._open_with_pyav()
            except DecodeError as av_error:
                raise DecodeError(
                    f"undecodable: soundfile: {self._soundfile_reason(sf_error)}; pyav: {av_error}"
                ) from None
        ogg_end = None  # how an Ogg file ends: whether it is whole, where seeks in it are exact
        if self.backend == "soundfile":  # where libsndfile's length is not the file's
            if self._sf.format == "OGG":
                ogg_end = self._read_head(lambda f: ogg.stream_end(f, self.size))
            self._refuse_truncated(ogg_end)
            wrong_length = self._wrong_length(ogg_end)
            if wrong_length:  # libsndfile would stop short (or read past the end): FFmpeg reads to the end
                what, advice = wrong_length
                try:
                    self._switch_to_pyav()
                except DecodeError as e:  # an Ogg chain whose streams change rate or channels
                    raise DecodeError(
                        f"undecodable: {what}, which FFmpeg cannot read to its end ({e}); {advice}"
                    ) from None
            elif self.frames >= UNKNOWN_LENGTH:
                # No length in the header (a FLAC encoded to a pipe: 0 total samples), and libsndfile's
                # seeks, soundfile's reads too, fail at the end of such a stream: FFmpeg reads to the end.
                self._switch_to_pyav()
            elif self.frames == 0:
                self._read_past_an_unwritten_length()
            elif self.size >= wav.WRAP:
                self._read_past_a_wrapped_length()
        if self.sample_rate <= 0 or self.channels <= 0:
            raise DecodeError("undecodable: header has no sample rate or channels")
        if self.backend == "soundfile" and self._sf.format in ("MP3", "OGG"):
            self._set_up_exact_seeks(ogg_end)

    def _soundfile_reason(self, error: Exception) -> str:
        """libsndfile's reason for a file it cannot open. Given a local file by name, it says the file "does
        not exist or is not a regular file" of any file whose format it does not know (an .mp3 that is
        not one), where a file object gets "Format not recognised"."""
        reason = _first_line(error)
        if (
            self._local_path is not None
            and reason.startswith("File does not exist or is not a regular file")
            and os.path.isfile(self._local_path)
        ):
            return "Format not recognised."
        return reason

    def _refuse_truncated(self, ogg_end: ogg.End | None) -> None:
        """A file cut short (a copy or upload that stopped) as a ``truncated`` error, where libsndfile would
        read it as a whole, shorter file: a WAV whose data chunk says more whole frames than the file holds
        (not the lengths a writer to a pipe puts there, ``wav.states_length``), an Ogg file that ends inside
        a page. (One that ends on a whole page without the end-of-stream flag is read: recorders of a live
        stream write such files whole, and a copy rarely stops on a page's last byte.)"""
        if self._sf.format in ("WAV", "WAVEX"):
            start, stated = self._read_head(wav.data_chunk)
            held = self.size - start
            frame = wav.SAMPLE_BYTES.get(self._sf.subtype, 0) * self.channels or 1  # (else: in bytes)
            if start > 0 and wav.states_length(stated) and held // frame < stated // frame:
                raise DecodeError(
                    f"truncated: the data chunk says {stated} bytes of samples, the file holds {held} "
                    f"({self.frames} frames, {self.frames / self.sample_rate:.3f} s)"
                )
        if ogg_end is not None and not ogg_end.whole_page:
            raise DecodeError(
                f"truncated: the Ogg stream ends inside a page (at byte {self.size}, "
                f"{self.frames / self.sample_rate:.3f} s decodable)"
            )

    def _set_up_exact_seeks(self, ogg_end: ogg.End | None) -> None:
        """How libsndfile's MP3 and Ogg decoders seek to give the samples a decode from the file's start
        gives (``_seek_target``; measured against whole decodes, tests/test_decode_seek.py).

        MP3: the first samples after a seek were wrong (``mp3.seek_preroll``): reads start that much earlier.
        Ogg Vorbis and Opus: a seek from where an earlier read left the decoder (libsndfile decodes on from
        there to a target less than 2 s ahead) lost or shifted samples, and a seek into the last page's
        samples gave shifted ones (``ogg.stream_end``): each seek starts from the file's start (a page search
        from there), and at most at the last page."""
        if self._sf.format == "MP3":
            self._seek_preroll = mp3.seek_preroll(self.sample_rate)
        elif self._sf.subtype in ("VORBIS", "OPUS"):
            self._seek_from_start = True
            granules = ogg_end.last_page_granules if ogg_end is not None else None
            if granules is not None:
                rate = ogg.OPUS_GRANULE_RATE if self._sf.subtype == "OPUS" else self.sample_rate
                self._last_exact_seek = self.frames - -(-granules * self.sample_rate // rate)

    def _seek_target(self, start: int) -> int:
        """Where libsndfile seeks to read from ``start`` (reading on to ``start``, whose samples before it
        are dropped): there, but for MP3 and Ogg (``_set_up_exact_seeks``)."""
        target = start - self._seek_preroll if start > 0 else 0
        if self._last_exact_seek is not None:
            target = min(target, self._last_exact_seek)
        return max(0, target)

    def _wrong_length(self, ogg_end: ogg.End | None = None) -> tuple[str, str] | None:
        """What makes libsndfile's length not the file's, where its format says (``mp3.py``, ``ogg.py``),
        and what to do with such a file FFmpeg cannot read either."""
        if self._sf.format == "MP3":
            length = self._read_head(lambda f: mp3.stated_length(f, self.size))
            if length is mp3.Length.NOT_STATED:  # estimated from the size and the first frame's bitrate
                return "an MP3 that does not state its length", "encode it again"
            if length is mp3.Length.UNDERSTATED:
                return "MP3s joined end to end", "split it into its parts"
        if self._sf.format == "OGG" and self._read_head(lambda f: ogg.chains_streams(f, self.size, ogg_end)):
            return "a chained Ogg (streams one after another)", "split it into its streams"
        return None

    def _starts_with(self, magic: bytes) -> bool:
        return self._read_head(lambda f: f.read(len(magic)) == magic)

    def _storage_failure(self) -> str:
        """The retryable reason for a store's read that failed under a decoder (``_KeepsStorageErrors``)."""
        error = getattr(self._raw, "error", None)
        return "" if error is None else f"unreadable: {type(error).__name__}: {error}"

    def _read_head(self, check):
        """``check(file)`` on the input read from its start. Where libsndfile already reads the same file
        object (an object store's file), its position is put back: libsndfile's MP3 decoder reads on
        from wherever the file is, and read garbage after a check had moved it."""
        position = self._raw.tell() if self._raw is not None else 0
        stream = self._stream()
        try:
            if isinstance(stream, str):
                with open(stream, "rb") as f:
                    result = check(f)
            else:
                result = check(stream)
        except storage_errors() as e:  # retryable on a later run, as at open
            raise DecodeError(f"unreadable: {type(e).__name__}: {e}") from None
        except Exception as e:  # what the store will not do (an HTTP server without ranges): final
            raise DecodeError(f"undecodable: {type(e).__name__}: {e}") from None
        finally:
            if not isinstance(stream, str) and self._raw is not None:
                self._raw.seek(position)
        return result  # (a failed read it took for the end of the file: see __init__)

    def _switch_to_pyav(self) -> None:
        """FFmpeg's whole decode in place of the file libsndfile opened (kept where FFmpeg fails: raises)."""
        opened = self._sf
        self._open_with_pyav()
        opened.close()
        if self._sf is opened:  # (not where the decode went to a temporary file that libsndfile reads)
            self._sf = None

    def _read_past_an_unwritten_length(self) -> None:
        """A WAV whose recorder stopped before it wrote the lengths (a crash, a pulled card: both sizes 0)
        has no frames for libsndfile, which believes its header (``wav.py``): its PCM samples are read
        as raw samples up to the end of the file, a window at a time; another such file is decoded by
        FFmpeg, which reads to the end. A file with no samples at all stays as libsndfile opened it (too
        short)."""
        samples = self._raw_samples(self._sf)
        if samples is not None and samples.frames > 0:
            self._sf.close()
            self._sf, self.frames = samples, int(samples.frames)
            return
        try:
            self._switch_to_pyav()
        except DecodeError:
            pass

    def _read_past_a_wrapped_length(self) -> None:
        """A plain WAV of 4 GiB of samples or more, whose 32-bit data length wrapped (``wav.py``): its PCM
        samples are read as raw samples over the length the file holds."""
        samples = self._raw_samples(self._sf, wrapped=True)
        if samples is not None and samples.frames > self.frames:
            self._sf.close()
            self._sf, self.frames = samples, int(samples.frames)

    def _raw_samples(self, opened: sf.SoundFile, wrapped: bool = False) -> sf.SoundFile | None:
        """The samples of a PCM WAV as raw samples: from its data chunk to the end of the file (no
        lengths), or over the header's length plus the 4 GiB multiples the file holds (``wrapped``)."""
        if opened.format not in ("WAV", "WAVEX") or opened.subtype not in wav.SAMPLE_BYTES or self.size <= 0:
            return None
        start, stated = self._read_head(wav.data_chunk)
        if not 0 < start < self.size:
            return None
        length = wav.unwrapped_length(start, stated, self.size) if wrapped else self.size - start
        file_start = max(self.source.member_offset, 0)  # a tar member's bytes start there
        samples = _RangeFile(self._raw, file_start + start, length)
        return sf.SoundFile(
            samples,
            samplerate=opened.samplerate,
            channels=opened.channels,
            subtype=opened.subtype,
            endian="LITTLE",
            format="RAW",
        )

    def _open_with_pyav(self) -> None:
        """FFmpeg's decode of the whole stream (``pyav.py``): held in memory, or past a size in a
        temporary file that libsndfile reads a window at a time."""
        try:
            decoded = pyav.decode_all(self._stream())
        except pyav.NoAudio as e:
            raise DecodeError(str(e)) from None
        except Exception as e:
            raise DecodeError(_first_line(e)) from None
        self.sample_rate, self.channels, self.frames = decoded.sample_rate, decoded.channels, decoded.frames
        self._pyav = decoded
        if decoded.samples is not None:
            self._decoded = decoded.samples
        else:
            self._sf = decoded.spilled
        self.backend = "pyav"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def decode_whole(self) -> bool:
        """Decode the whole file once; later reads slice it. For windows that together read more
        than the file (five 3 s crops of a 5 s clip decoded it three times over): the same frames,
        since every backend reads exact samples. False where the whole does not decode; reads then
        go on window by window, so a corrupt tail still leaves the windows before it."""
        if self._decoded is None:
            try:
                self._decoded = self.read(0, self.frames)
            except DecodeError:
                return False
        return True

    def read(self, start: int, num_frames: int) -> np.ndarray:
        """Frames ``[start, start + num_frames)`` clipped to the file, as float32 ``[C, n]``
        (a view: not necessarily contiguous)."""
        start = max(0, min(int(start), self.frames))
        num_frames = max(0, min(int(num_frames), self.frames - start))
        if self._decoded is not None:
            return self._decoded[:, start : start + num_frames]
        if self._flac is not None:
            try:
                return self._flac.read(start, num_frames)
            except flac.FlacReadError as e:
                raise DecodeError(f"unreadable: {e}") from None
            except flac.FlacError as e:
                raise DecodeError(self._storage_failure() or f"truncated or corrupt: {e}") from None
        try:
            seek_to = self._seek_target(start)
            if self._seek_from_start and seek_to > 0:
                self._sf.seek(0)
            self._sf.seek(seek_to)
            data = self._sf.read(start - seek_to + num_frames, dtype="float32", always_2d=True)[start - seek_to :]
        except Exception as e:
            raise DecodeError(self._storage_failure() or f"truncated or corrupt: {_first_line(e)}") from None
        if data.shape[0] < num_frames:
            raise DecodeError(
                self._storage_failure()
                or f"truncated: header promises {self.frames} frames, decoding stopped at {start + data.shape[0]}"
            )
        return data.T  # no copy: the mono mix and soxr read the interleaved frames as they are

    def close(self) -> None:
        if self._flac is not None:
            self._flac.close()
            self._flac = None
        if self._sf is not None:
            self._sf.close()
            self._sf = None
        if self._pyav is not None:
            self._pyav.close()
            self._pyav = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# A stream whose length the store does not give (an HTTP server that answers without Content-Length:
# fsspec's streaming file, which cannot seek) is copied to a temporary file, read from there.
COPY_CHUNK_BYTES = 2**20


def _seekable(file):
    """``file``, or where it cannot seek (fsspec's ``ValueError``, "Cannot seek streaming HTTP file") its
    bytes in a temporary file (removed when closed)."""
    try:
        file.seek(0, io.SEEK_END)
        file.seek(0)
        return file
    except ValueError:
        pass
    copy = tempfile.TemporaryFile(prefix=pyav.SPILL_PREFIX)
    try:
        with file:
            shutil.copyfileobj(file, copy, COPY_CHUNK_BYTES)
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return copy


def _first_line(error: BaseException) -> str:
    """The first line of an error, without libsndfile's 'Error opening <object repr>:' prefix."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return re.sub(r"^Error opening .*?: ", "", line)


def conform_channels(audio: np.ndarray, channels: int | None) -> np.ndarray:
    """``[C, n]`` -> mono ``[n]`` (channels None), or exactly ``channels`` rows.

    As stable-audio-tools' ``Mono``/``Stereo`` transforms: mono input is repeated to fill more
    channels; one channel from several is their mean; else extra channels are dropped (the first
    ones kept).
    """
    if channels is None:
        if audio.shape[0] == 1:
            return audio[0]
        # Channel by channel: the same sums as audio.mean(axis=0), without a contiguous copy first
        # (a mean over the channel axis of interleaved frames is ten times slower).
        total = audio[0] + audio[1]
        for c in range(2, audio.shape[0]):
            total += audio[c]
        total /= np.float32(audio.shape[0])  # in place: the same values, one buffer fewer
        return total
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    if audio.shape[0] > channels:
        # (the left channel alone dropped whatever was panned right)
        return conform_channels(audio, None)[None] if channels == 1 else audio[:channels]
    return np.concatenate([audio, np.repeat(audio[-1:], channels - audio.shape[0], axis=0)], axis=0)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality, deterministic)."""
    if orig_sr == target_sr or audio.shape[-1] == 0:
        return np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(soxr.resample(audio.T, orig_sr, target_sr, quality="HQ").T, dtype=np.float32)


def crop_or_pad(audio: np.ndarray, length: int) -> np.ndarray:
    """Exactly ``length`` samples along the last axis: cut, or zero-pad at the end."""
    n = audio.shape[-1]
    if n == length:
        return audio
    if n > length:
        return audio[..., :length]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, length - n)]
    return np.pad(audio, pad)


# Audio decoded on each side of a window before resampling, in samples at the lower of the two
# rates: soxr HQ's filter reaches about 60 of them, so the trimmed window equals the same samples of
# the whole file resampled at once (measured: 4e-7 max difference from 8 to 96 kHz; 64 left 3e-4).
RESAMPLE_MARGIN = 128


def resampled_length(frames: int, sample_rate: int, target_rate: int) -> int:
    """Samples of a whole file resampled to ``target_rate`` as ``librosa.load`` returns it:
    ``ceil(frames * target / rate)`` (soxr gives ``round``; librosa pads the last one with 0)."""
    return -(-frames * target_rate // sample_rate)


def load_window(
    audio_file: AudioFile, start_seconds: float, duration: float, sample_rate: int, channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Decode ``duration`` seconds from ``start_seconds``, resampled and padded.

    Returns the window (``[n]`` mono or ``[C, n]``) of exactly
    ``round(duration * sample_rate)`` samples, and how many of them are real
    audio (the rest is zero padding).

    The window is samples ``[m, m + n)``, ``m = round(start_seconds * sample_rate)``, of the
    whole file resampled once (as a per-song loop with ``librosa.load(sr=...)`` would cut it):
    only a margin around it is decoded, starting on a native sample that falls exactly on the
    target rate's grid, resampled with soxr and trimmed. Windows never depend on where other
    windows were cut.
    """
    sr = audio_file.sample_rate
    length = int(round(duration * sample_rate))
    start = int(round(start_seconds * sample_rate))
    if sr == sample_rate:
        audio = conform_channels(audio_file.read(start, length), channels)
        valid = _valid_samples(audio_file, start, length, sample_rate)  # after the read: where the file ends
        return crop_or_pad(np.ascontiguousarray(audio, dtype=np.float32), length), valid
    # ``native`` native samples span exactly ``target`` output samples: chunks start on those blocks.
    common = math.gcd(sr, sample_rate)
    native, target = sr // common, sample_rate // common
    margin = -(-RESAMPLE_MARGIN * sample_rate // min(sr, sample_rate))
    first = max(0, start - margin) // target
    last = -(-min(resampled_length(audio_file.frames, sr, sample_rate), start + length + margin) // target)
    chunk = audio_file.read(first * native, (last - first) * native)
    valid = _valid_samples(audio_file, start, length, sample_rate)
    audio = conform_channels(chunk, channels)
    check_finite(audio, sr, first * native / sr)  # before resampling, which spreads one inf over the chunk
    audio = resample(audio, sr, sample_rate)
    offset = start - first * target
    audio = crop_or_pad(audio[..., offset : offset + length], length)
    # Past the end of the whole resampled file (soxr's own length) it holds zeros.
    end = (2 * audio_file.frames * sample_rate + sr) // (2 * sr) - start
    if end < length:
        audio = np.array(audio)  # a slice of the resampled chunk: write a copy
        audio[..., max(0, end) :] = 0
    return audio, valid


def _valid_samples(audio_file: AudioFile, start: int, length: int, sample_rate: int) -> int:
    """How many of a window's samples are the file's: a window that starts past the end has none, and
    is no window of the file."""
    valid = min(length, resampled_length(audio_file.frames, audio_file.sample_rate, sample_rate) - start)
    if valid <= 0 and length > 0:
        raise DecodeError(
            f"past the end: the window starts at {start / sample_rate:.3f} s, the audio ends at "
            f"{audio_file.duration:.3f} s"
        )
    return valid


def check_finite(audio: np.ndarray, sample_rate: int, start: float = 0.0) -> None:
    """Reject samples (``[n]`` or ``[C, n]``, ``start`` seconds into the file) holding NaN or inf,
    naming where the first one is."""
    finite = np.isfinite(audio)
    if not finite.all():
        first = int(np.argmin(finite.all(axis=0) if finite.ndim > 1 else finite))
        raise DecodeError(f"non-finite samples: NaN/inf values from {start + first / sample_rate:.3f} s")


def check_not_silent(audio: np.ndarray, threshold_db: float | None) -> None:
    """Reject a window whose peak is below ``threshold_db`` dBFS (None: never)."""
    if threshold_db is None:
        return
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 10.0 ** (threshold_db / 20.0):
        level = -math.inf if peak == 0 else 20 * math.log10(peak)
        raise DecodeError(f"silent: peak {level:.1f} dBFS is below {threshold_db:g} dBFS")
