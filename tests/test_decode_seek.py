"""A window read by seeking is the same slice of a decode of the whole file, in the formats whose decoders'
seeks were not exact (libsndfile's MP3 and Ogg), and files cut short are said to be."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from ray_pipelines.audio import mp3
from ray_pipelines.audio.decode import AudioFile, DecodeError, InputAudio
from tests.audio_helpers import tone, write_audio


def open_path(path) -> AudioFile:
    return AudioFile(InputAudio(str(path), path.stat().st_size))


def bursts_and_quiet(seconds: float, sample_rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """Loud noise bursts between quiet stretches (a tone, then digital silence), ``[n, channels]``: an MP3
    encoder's quiet frames are its smallest, so the bit reservoir reaches back over many of them, and a
    VBR file's bitrate swings."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    burst = ((t * 1.7) % 1.0 < 0.35)[:, None]
    quiet = (0.2 * np.sin(2 * np.pi * 440 * t) * (t % 3 < 1))[:, None]
    return np.where(burst, 0.5 * rng.standard_normal((len(t), channels)), quiet).astype(np.float32)


def write_vbr_mp3(path, audio: np.ndarray, sample_rate: int, quality: int = 2):
    """LAME's VBR (``-V quality``) by FFmpeg, with the Xing frame FFmpeg's muxer writes (the frame count
    libsndfile then reads as the file's length)."""
    import av

    layout = "mono" if audio.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate)
        stream.layout = layout
        stream.codec_context.qscale = True
        stream.codec_context.global_quality = quality * 118  # FFmpeg's FF_QP2LAMBDA: LAME's -V
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def window_starts(frames: int, count: int, seed: int = 1) -> list[int]:
    """Starts over the whole file, in its last 0.3 s and its last 200 samples, in no order (each read
    follows another's)."""
    rng = np.random.default_rng(seed)
    starts = [*rng.integers(1, frames - 1, count), *(frames - rng.integers(1, 13000, count // 2))]
    starts += [*(frames - rng.integers(1, 200, 4))]
    return [int(s) for s in rng.permutation(starts)]


def worst_window_error(path, starts: list[int], length: int = 6000) -> float:
    """The largest difference between a window read with one open file, one after another, and the same
    samples of the file decoded whole (libsndfile, from the start)."""
    whole = sf.read(str(path), dtype="float32", always_2d=True)[0]
    worst = 0.0
    with open_path(path) as f:
        assert f.backend == "soundfile" and f.frames == len(whole)
        for start in starts:
            window = np.asarray(f.read(start, length)).T
            expected = whole[start : start + length]
            assert window.shape == expected.shape
            worst = max(worst, float(np.abs(window - expected).max()))
    return worst


@pytest.mark.parametrize(("sample_rate", "channels"), [(44100, 2), (22050, 1)])
def test_windows_of_a_vbr_mp3_with_a_xing_frame_are_the_whole_decodes_samples(tmp_path, sample_rate, channels):
    """libsndfile reads a VBR MP3 whose Xing frame states its length itself, seeking; its first 10-100 ms
    after a seek were wrong (0.27-0.60 of full scale off): mpg123 starts a frame or two before the
    target, where the bit reservoir reaches further back. Reads now start ``mp3.seek_preroll`` earlier:
    the same samples, to float32 rounding (bit for bit at 44.1 kHz stereo)."""
    path = write_vbr_mp3(tmp_path / "vbr.mp3", bursts_and_quiet(8.0, sample_rate, channels), sample_rate)
    with open(path, "rb") as f:
        assert mp3.stated_length(f, path.stat().st_size) is mp3.Length.STATED
    worst = worst_window_error(path, window_starts(8 * sample_rate, 24))
    if channels == 2:
        assert worst == 0.0
    else:  # mpg123's synthesis rounds by where its decoding started (MPEG-2, mono): one or two float32 steps
        assert worst <= 3e-7


def test_the_mp3_preroll_covers_the_furthest_the_bit_reservoir_reaches():
    """(the reservoir's size over the smallest frame's main data, two frames more)"""
    assert mp3.seek_preroll(44100) == 10 * 1152  # 32 kbit/s frames: 104 bytes, 68 of them main data
    assert mp3.seek_preroll(48000) == 11 * 1152
    assert mp3.seek_preroll(24000) == 87 * 576  # 8 kbit/s: 24 bytes, 3 of main data, 255 of reservoir
    assert mp3.seek_preroll(8000) == 7 * 576


def test_windows_of_an_ogg_vorbis_file_are_the_whole_decodes_samples_to_its_end(tmp_path):
    """libsndfile's seeks into the last Ogg page's samples gave shifted or garbage samples (62 of 80 windows
    within 6,000 samples of the end), and a seek less than 2 s after where an earlier read stopped lost
    samples (it decodes on from there). Each seek now starts from the file's start, and before the last
    page: the same samples, bit for bit."""
    for seed, (sample_rate, channels, seconds) in enumerate([(44100, 2, 3.3), (16000, 1, 3.3), (48000, 2, 6.0)]):
        path = tmp_path / f"clip{seed}.ogg"
        sf.write(str(path), bursts_and_quiet(seconds, sample_rate, channels, seed), sample_rate, format="OGG")
        frames = int(seconds * sample_rate)
        assert worst_window_error(path, window_starts(frames, 20, seed)) == 0.0


def test_windows_of_an_opus_file_near_its_end_are_the_whole_decodes_samples(tmp_path):
    """Opus: seeks into its last samples were 0.4 off. Its decoder's state after a seek is not bit for bit
    that of a decode from the start (it converges), so the samples agree to about -50 dBFS at worst."""
    path = tmp_path / "clip.opus"
    sf.write(str(path), bursts_and_quiet(3.3, 48000, 2), 48000, format="OGG", subtype="OPUS")
    assert worst_window_error(path, window_starts(int(3.3 * 48000), 20)) < 5e-3


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each page of an Ogg file."""
    pages, at = [], 0
    while at < len(data):
        segments = data[at + 26]
        size = 27 + segments + sum(data[at + 27 : at + 27 + segments])
        pages.append((at, size))
        at += size
    return pages


def test_a_wav_or_ogg_cut_short_is_truncated_and_one_written_to_a_pipe_is_not(tmp_path):
    """A copy that stopped: libsndfile read the WAV (its data chunk saying more than the file holds) and the
    Ogg (no end-of-stream page) as whole, shorter files, every window past the cut zero-padded or "past
    the end". The lengths a writer to a pipe leaves in a WAV (0xFFFFFFFF, sox's 0x7FFFF000) read on as
    before: to the end of the file."""
    audio = tone(3.0, 44100, channels=2)
    wav = write_audio(tmp_path / "full.wav", audio).read_bytes()
    (tmp_path / "cut.wav").write_bytes(wav[: len(wav) // 2])
    with pytest.raises(DecodeError) as cut:
        open_path(tmp_path / "cut.wav")
    held = len(wav) // 2 - 44
    assert str(cut.value) == (
        f"truncated: the data chunk says {3 * 44100 * 4} bytes of samples, the file holds {held} "
        f"({held // 4} frames, {held // 4 / 44100:.3f} s)"
    )
    for unknown in (0xFFFFFFFF, 0x7FFFF000):
        piped = tmp_path / f"piped_{unknown:x}.wav"
        piped.write_bytes(wav[:4] + struct.pack("<I", unknown) + wav[8:40] + struct.pack("<I", unknown) + wav[44:])
        with open_path(piped) as f:
            assert f.frames == 3 * 44100
            np.testing.assert_array_equal(f.read(0, f.frames).T, sf.read(io.BytesIO(wav), dtype="float32")[0])

    buffer = io.BytesIO()
    sf.write(buffer, audio, 44100, format="OGG", subtype="VORBIS")
    ogg = buffer.getvalue()
    pages = ogg_pages(ogg)
    with open_path(write_bytes(tmp_path / "full.ogg", ogg)) as f:
        assert f.frames == 3 * 44100
    mid_page = pages[-2][0] + pages[-2][1] // 2
    with pytest.raises(DecodeError, match="^truncated: the Ogg stream ends inside a page"):
        open_path(write_bytes(tmp_path / "cut_mid.ogg", ogg[:mid_page]))
    # Whole pages without the one that ends the stream (a live stream's recording): read, what it holds.
    with open_path(write_bytes(tmp_path / "cut_page.ogg", ogg[: pages[-1][0]])) as f:
        assert 0 < f.frames < 3 * 44100
    # A WAV short of part of its last frame only: every whole frame is there, so it is read.
    (tmp_path / "odd.wav").write_bytes(wav[:4] + wav[4:40] + struct.pack("<I", 3 * 44100 * 4 + 2) + wav[44:])
    with open_path(tmp_path / "odd.wav") as f:
        assert f.frames == 3 * 44100


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_local_file_named_mp3_that_is_no_audio_says_its_format_is_not_recognised(tmp_path):
    """libsndfile, given a local file by name, said "File does not exist or is not a regular file (possibly
    a pipe?)" of a file that exists and is regular, where it says "Format not recognised" on S3."""
    path = tmp_path / "page.mp3"
    path.write_text("<html><body>403 Forbidden</body></html>\n" * 50)
    with pytest.raises(DecodeError, match=r"^undecodable: soundfile: Format not recognised\.; pyav: "):
        open_path(path)
