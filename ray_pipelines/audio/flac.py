"""Windows of FLAC files read with libFLAC directly, through ctypes.

Why not libsndfile, which reads FLAC with the same libFLAC: it then copies every
sample into interleaved floats in a scalar loop (``flac_buffer_copy``), a quarter
of a window's decode time. Here each of libFLAC's frames (per-channel int32
blocks of about 4,096 samples) is copied as it comes, one ``memmove`` per
channel, and the window becomes float32 in one vectorised multiply by
``2 ** -(bits - 1)``: exactly the values libsndfile gives, planar ``[C, n]``.

libFLAC is found in pyFLAC's package (the ``flac`` extra: pyFLAC ships the
library for Linux, macOS and Windows), else on the system (``libFLAC.so.12``,
``libflac12`` on Debian and Ubuntu). Without it, or with
``RAY_PIPELINES_LIBFLAC=off``, FLAC goes through libsndfile like the other
formats. ``RAY_PIPELINES_LIBFLAC=/path/to/libFLAC.so`` names a library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
import platform
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..storage import storage_errors

FLAC_MAGIC = b"fLaC"
LIBRARY_ENV = "RAY_PIPELINES_LIBFLAC"

# libFLAC's enums (FLAC/stream_decoder.h), the values this module needs.
_INIT_OK = 0
_STATE_END_OF_STREAM = 4
_WRITE_CONTINUE, _WRITE_ABORT = 0, 1
_READ_CONTINUE, _READ_END_OF_STREAM, _READ_ABORT = 0, 1, 2
_SEEK_OK, _SEEK_ERROR = 0, 1
_TELL_OK, _TELL_ERROR = 0, 1
_LENGTH_OK, _LENGTH_UNSUPPORTED = 0, 2
_METADATA_STREAMINFO = 0
_ERRORS = {
    0: "lost sync",
    1: "bad frame header",
    2: "frame CRC mismatch",
    3: "unparseable stream",
    4: "bad metadata",
    5: "out of bounds",
}


class FlacError(Exception):
    """The stream cannot be read as FLAC (at open), or is corrupt or truncated (at read)."""


class FlacReadError(FlacError):
    """Reading the underlying file failed (a storage error: it may heal by itself)."""


class _FrameHeader(ctypes.Structure):
    _fields_ = [
        ("blocksize", ctypes.c_uint32),
        ("sample_rate", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("channel_assignment", ctypes.c_int),
        ("bits_per_sample", ctypes.c_uint32),
        ("number_type", ctypes.c_int),
        ("number", ctypes.c_uint64),
        ("crc", ctypes.c_uint8),
    ]


class _StreamInfo(ctypes.Structure):
    _fields_ = [
        ("min_blocksize", ctypes.c_uint32),
        ("max_blocksize", ctypes.c_uint32),
        ("min_framesize", ctypes.c_uint32),
        ("max_framesize", ctypes.c_uint32),
        ("sample_rate", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("bits_per_sample", ctypes.c_uint32),
        ("total_samples", ctypes.c_uint64),
        ("md5sum", ctypes.c_ubyte * 16),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("is_last", ctypes.c_int),
        ("length", ctypes.c_uint32),
        ("stream_info", _StreamInfo),
    ]  # the first member of the data union


_Decoder = ctypes.c_void_p
_Client = ctypes.c_void_p
_u64_p = ctypes.POINTER(ctypes.c_uint64)
_READ = ctypes.CFUNCTYPE(ctypes.c_int, _Decoder, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), _Client)
_SEEK = ctypes.CFUNCTYPE(ctypes.c_int, _Decoder, ctypes.c_uint64, _Client)
_TELL = ctypes.CFUNCTYPE(ctypes.c_int, _Decoder, _u64_p, _Client)
_LENGTH = ctypes.CFUNCTYPE(ctypes.c_int, _Decoder, _u64_p, _Client)
_EOF = ctypes.CFUNCTYPE(ctypes.c_int, _Decoder, _Client)
_WRITE = ctypes.CFUNCTYPE(
    ctypes.c_int, _Decoder, ctypes.POINTER(_FrameHeader), ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)), _Client
)
_METADATA = ctypes.CFUNCTYPE(None, _Decoder, ctypes.POINTER(_Metadata), _Client)
_ERROR = ctypes.CFUNCTYPE(None, _Decoder, ctypes.c_int, _Client)


def _pyflac_library() -> str | None:
    """The libFLAC that pyFLAC ships, in its package's ``libraries/<platform>/`` folder."""
    spec = importlib.util.find_spec("pyflac")
    if spec is None or spec.origin is None:
        return None
    system, machine = platform.system(), platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
    folder = {"Linux": f"linux-{arch}", "Darwin": f"darwin-{arch}", "Windows": "windows-x86_64"}.get(system)
    if folder is None:
        return None
    found = sorted((Path(spec.origin).parent / "libraries" / folder).glob("*FLAC*.[sd]*"))
    return str(found[0]) if found else None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the signatures used here (ctypes would otherwise pass 64-bit values as int)."""
    p = _Decoder
    signatures = {
        "FLAC__stream_decoder_new": ([], p),
        "FLAC__stream_decoder_delete": ([p], None),
        "FLAC__stream_decoder_finish": ([p], ctypes.c_int),
        "FLAC__stream_decoder_init_file": ([p, ctypes.c_char_p, _WRITE, _METADATA, _ERROR, _Client], ctypes.c_int),
        "FLAC__stream_decoder_init_stream": (
            [p, _READ, _SEEK, _TELL, _LENGTH, _EOF, _WRITE, _METADATA, _ERROR, _Client],
            ctypes.c_int,
        ),
        "FLAC__stream_decoder_process_until_end_of_metadata": ([p], ctypes.c_int),
        "FLAC__stream_decoder_process_single": ([p], ctypes.c_int),
        "FLAC__stream_decoder_seek_absolute": ([p, ctypes.c_uint64], ctypes.c_int),
        "FLAC__stream_decoder_get_state": ([p], ctypes.c_int),
        "FLAC__stream_decoder_flush": ([p], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


@functools.cache
def _load(choice: str) -> ctypes.CDLL | None:
    if choice.lower() in ("off", "0", "no", "false"):
        return None
    candidates = [choice] if choice else [_pyflac_library(), ctypes.util.find_library("FLAC")]
    for path in filter(None, candidates):
        try:
            return _bind(ctypes.CDLL(path))
        except (OSError, AttributeError):  # missing, or too old to have these functions
            continue
    return None


def library() -> ctypes.CDLL | None:
    """The loaded libFLAC, or None (FLAC then goes through libsndfile)."""
    return _load(os.environ.get(LIBRARY_ENV, ""))


def available() -> bool:
    return library() is not None


_scratch = threading.local()


def _int_buffer(channels: int, frames: int) -> np.ndarray:
    """A reused per-thread ``int32 [channels, frames]`` buffer: a fresh one for every window would be
    first-touched memory, which this kind of VM makes slow (see docs/benchmarks.md)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < channels * frames:
        buffer = _scratch.buffer = np.empty(channels * frames, dtype=np.int32)
    return buffer[: channels * frames].reshape(channels, frames)


class FlacReader:
    """An open FLAC stream: a local path (read by libFLAC in C) or a seekable binary file object
    of ``size`` bytes (a remote file, a tar member). ``read(start, n)`` decodes only that window.

    ``sample_rate``, ``channels``, ``bits_per_sample`` and ``frames`` (per channel) come from
    STREAMINFO. Raises :class:`FlacError`.
    """

    def __init__(self, source: str | BinaryIO, size: int = -1):
        lib = library()
        if lib is None:
            raise FlacError("libFLAC is not available")
        if size < 0 and not isinstance(source, str):  # libFLAC's seek needs the length
            size = source.seek(0, os.SEEK_END)
            source.seek(0)
        self._lib, self._source, self._size = lib, source, size
        self._info: _StreamInfo | None = None
        self._error: FlacError | None = None  # the first failure a callback saw (FlacReadError: the file's)
        self._window: np.ndarray | None = None  # the int32 [C, n] window being filled during a read
        self._rows: list[int] = []  # its rows' addresses
        self._filled = 0
        self._callbacks = self._make_callbacks()  # kept referenced while libFLAC holds them
        self._decoder = lib.FLAC__stream_decoder_new()
        if not self._decoder:
            raise MemoryError("libFLAC could not allocate a decoder")
        try:
            self._init()
        except BaseException:
            self.close()
            raise

    def _make_callbacks(self) -> dict:
        callbacks = {
            "write": _WRITE(self._on_write),
            "metadata": _METADATA(self._on_metadata),
            "error": _ERROR(self._on_error),
        }
        if not isinstance(self._source, str):
            callbacks.update(
                read=_READ(self._on_read),
                seek=_SEEK(self._on_seek),
                tell=_TELL(self._on_tell),
                length=_LENGTH(self._on_length),
                eof=_EOF(self._on_eof),
            )
        return callbacks

    def _init(self) -> None:
        c, lib = self._callbacks, self._lib
        if isinstance(self._source, str):
            status = lib.FLAC__stream_decoder_init_file(
                self._decoder, os.fsencode(self._source), c["write"], c["metadata"], c["error"], None
            )
        else:
            status = lib.FLAC__stream_decoder_init_stream(
                self._decoder,
                c["read"],
                c["seek"],
                c["tell"],
                c["length"],
                c["eof"],
                c["write"],
                c["metadata"],
                c["error"],
                None,
            )
        if status != _INIT_OK:
            raise FlacError(f"libFLAC init status {status}")
        if not lib.FLAC__stream_decoder_process_until_end_of_metadata(self._decoder) or self._info is None:
            raise self._error or FlacError("no STREAMINFO block")
        info = self._info
        if info.total_samples == 0 or info.channels == 0 or info.sample_rate == 0:
            raise FlacError("STREAMINFO does not give the length")  # a streamed FLAC: libsndfile copes
        self.sample_rate, self.channels = int(info.sample_rate), int(info.channels)
        self.bits_per_sample, self.frames = int(info.bits_per_sample), int(info.total_samples)

    def read(self, start: int, num_frames: int) -> np.ndarray:
        """Frames ``[start, start + num_frames)`` clipped to the stream, float32 ``[C, n]``."""
        start = max(0, min(int(start), self.frames))
        num_frames = max(0, min(int(num_frames), self.frames - start))
        out = np.empty((self.channels, num_frames), dtype=np.float32)
        if num_frames == 0:
            return out
        self._window, self._filled = _int_buffer(self.channels, num_frames), 0
        self._error = None
        self._rows = [row.ctypes.data for row in self._window]
        lib, decoder = self._lib, self._decoder
        try:
            # The seek decodes the frame holding `start` and hands it over cut to begin there.
            if not lib.FLAC__stream_decoder_seek_absolute(decoder, start):
                lib.FLAC__stream_decoder_flush(decoder)
                if self._error is not None:
                    raise type(self._error)(f"seek to frame {start} failed ({self._error})")
                raise FlacError(f"seek to frame {start} failed")
            while self._filled < num_frames and self._error is None:
                if lib.FLAC__stream_decoder_get_state(decoder) == _STATE_END_OF_STREAM:
                    break
                if not lib.FLAC__stream_decoder_process_single(decoder):
                    break
            if self._error is not None:
                raise self._error
            if self._filled < num_frames:
                raise FlacError(f"stream ends at frame {start + self._filled}, STREAMINFO promises {self.frames}")
            np.multiply(self._window, np.float32(2.0 ** (1 - self.bits_per_sample)), out=out, dtype=np.float32)
        finally:
            self._window = None
        return out

    def close(self) -> None:
        if getattr(self, "_decoder", None):
            self._lib.FLAC__stream_decoder_finish(self._decoder)
            self._lib.FLAC__stream_decoder_delete(self._decoder)
            self._decoder = None

    def __del__(self):
        self.close()

    # -- libFLAC callbacks (an exception must not cross into C: they return statuses instead) --

    def _on_write(self, _decoder, frame, buffer, _client) -> int:
        window = self._window
        if window is None:  # decoding outside a read (libFLAC does not, but be safe)
            return _WRITE_CONTINUE
        header = frame.contents
        count = min(header.blocksize, window.shape[1] - self._filled)
        if count > 0:
            if header.channels != window.shape[0]:
                self._error = FlacError(f"a frame has {header.channels} channels, STREAMINFO {window.shape[0]}")
                return _WRITE_ABORT
            offset = self._filled * 4
            for channel, row in enumerate(self._rows):
                ctypes.memmove(row + offset, buffer[channel], count * 4)
            self._filled += count
        return _WRITE_CONTINUE

    def _on_metadata(self, _decoder, metadata, _client) -> None:
        if metadata.contents.type == _METADATA_STREAMINFO:
            self._info = _StreamInfo.from_buffer_copy(metadata.contents.stream_info)  # only valid in here

    def _on_error(self, _decoder, status, _client) -> None:
        if self._error is None:
            self._error = FlacError(f"libFLAC: {_ERRORS.get(status, f'error {status}')}")

    def _on_read(self, _decoder, buffer, size_p, _client) -> int:
        try:
            wanted = size_p[0]
            view = (ctypes.c_char * wanted).from_address(buffer)
            got = self._source.readinto(memoryview(view).cast("B"))
        except Exception as e:  # the store's errors may heal (retried next run); others are the file's
            kind = FlacReadError if isinstance(e, storage_errors()) else FlacError
            self._error = kind(f"{type(e).__name__}: {e}")
            return _READ_ABORT
        size_p[0] = got or 0
        return _READ_CONTINUE if got else _READ_END_OF_STREAM

    def _on_seek(self, _decoder, offset, _client) -> int:
        try:
            self._source.seek(offset)
            return _SEEK_OK
        except Exception:
            return _SEEK_ERROR

    def _on_tell(self, _decoder, offset_p, _client) -> int:
        try:
            offset_p[0] = self._source.tell()
            return _TELL_OK
        except Exception:
            return _TELL_ERROR

    def _on_length(self, _decoder, length_p, _client) -> int:
        if self._size < 0:
            return _LENGTH_UNSUPPORTED
        length_p[0] = self._size
        return _LENGTH_OK

    def _on_eof(self, _decoder, _client) -> int:
        try:
            return int(self._size >= 0 and self._source.tell() >= self._size)
        except Exception:
            return 1

    def __enter__(self) -> FlacReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
