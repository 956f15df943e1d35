"""Real encoded audio for tests: generated signals written by real encoders."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ray_pipelines.jobs.demo import copy_writable

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(
    seconds: float,
    sample_rate: int = 44100,
    freq: float = 440.0,
    channels: int = 1,
    amplitude: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """A sine plus a little noise, ``[n]`` or ``[n, channels]`` float32."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    x = amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)


def write_audio(path: Path, audio: np.ndarray, sample_rate: int = 44100) -> Path:
    """Encode with libsndfile in the format named by the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = FORMATS[path.suffix.lstrip(".").lower()]
    sf.write(str(path), audio, sample_rate, format=fmt, subtype=subtype)
    return path


def write_mp3_without_length(path: Path, audio: np.ndarray, sample_rate: int = 44100, vbr: bool = False) -> Path:
    """A mono MP3 with no Xing/Info frame (FFmpeg's ``-write_xing 0``, as stream rips and older encoders
    write them): libsndfile can only estimate its length. ``write_audio`` writes one that states it.
    ``vbr``: LAME's variable bitrate (``-q:a 2``), whose frames' sizes follow the audio."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp3", options={"write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate)
        stream.layout = "mono"
        if vbr:
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2 * 118  # FFmpeg's FF_QP2LAMBDA: LAME's V2
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_aac(path: Path, audio: np.ndarray, sample_rate: int = 44100) -> Path:
    """AAC in an MP4 container (``.m4a``, ``.m4b``), by FFmpeg: a format libsndfile cannot read.
    ``audio`` is ``[n]`` (mono) or ``[n, channels]``."""
    import av

    planar = np.ascontiguousarray(audio.T if audio.ndim == 2 else audio[None], dtype=np.float32)
    layout = "mono" if len(planar) == 1 else "stereo"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def make_library(root: Path, n_per_format: int = 2, seconds: float = 2.0) -> list[Path]:
    """A folder of tones in every format: ``root/<fmt>/tone_<i>.<fmt>``."""
    paths = []
    for fmt in FORMATS:
        for i in range(n_per_format):
            paths.append(write_audio(root / fmt / f"tone_{i}.{fmt}", tone(seconds, freq=220.0 * (i + 1), seed=i)))
    return paths


def copy_shared(dest: Path, subdir: str = "sonic-pi", limit_per_folder: int | None = None) -> Path:
    """Copy real recordings from ../shared/audio (read-only there) into ``dest``."""
    source = SHARED_AUDIO / subdir
    if not source.exists():
        import pytest

        pytest.skip(f"real recordings not found at {source}")
    if limit_per_folder is None:  # the copies writable (tests change them), not read-only as there
        copy_writable(source, dest)
        return dest
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir())[:limit_per_folder]:
            (dest / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / folder.name / f.name)
    return dest


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A WebDataset-style shard with the given member names and bytes (names not sanitised)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def encoded_bytes(audio: np.ndarray, fmt: str = "flac", sample_rate: int = 44100) -> bytes:
    buffer = io.BytesIO()
    f, subtype = FORMATS[fmt]
    sf.write(buffer, audio, sample_rate, format=f, subtype=subtype)
    return buffer.getvalue()


class FailingAfter(io.RawIOBase):
    """A real file whose reads fail past ``limit`` bytes, as a dropped connection would (or with
    ``error``: another failure, such as fsspec's ValueError for an HTTP server without ranges)."""

    def __init__(self, path, limit: int, error: Exception | None = None):
        self._file, self._limit = open(path, "rb"), limit
        self._error = error or ConnectionError("connection reset by peer")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(pos, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        if self._file.tell() + len(buffer) > self._limit:
            raise self._error
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()
