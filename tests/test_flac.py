"""FLAC windows read with libFLAC directly: the same samples as libsndfile, from paths,
file objects and tar members, and clear errors for broken files."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf

from ray_pipelines.audio import flac
from ray_pipelines.audio.decode import AudioFile, DecodeError, InputAudio
from tests.audio_helpers import SHARED_AUDIO, FailingAfter, tone, write_audio

pytestmark = pytest.mark.skipif(not flac.available(), reason="libFLAC not installed (the `flac` extra)")

SHARED_FLAC = sorted((SHARED_AUDIO / "sonic-pi").glob("*/*.flac"))


def libsndfile_window(path, start: int, n: int) -> np.ndarray:
    """libsndfile's float32 ``[C, n]`` for the window, sliced from a whole decode (no seek)."""
    return sf.read(str(path), dtype="float32", always_2d=True)[0][start : start + n].T


def windows_of(frames: int) -> list[tuple[int, int]]:
    """Starts and lengths across FLAC frame boundaries (4,096 or 4,608 samples), to the last frame
    and past it (reads are clipped to the file)."""
    windows = [
        (0, 1),
        (0, 5000),
        (4095, 4098),
        (frames // 3, frames // 2),
        (frames - 777, 777),
        (frames - 10, 100),
        (frames, 10),
    ]
    return [(max(0, start), n) for start, n in windows]


def test_every_shared_recording_reads_the_same_samples_as_libsndfile():
    """16-bit mono and stereo and a 24-bit stereo file, all 44.1 kHz: bit-identical float32."""
    if not SHARED_FLAC:
        pytest.skip(f"real recordings not found under {SHARED_AUDIO}")
    depths = set()
    for path in SHARED_FLAC:
        with flac.FlacReader(str(path)) as reader:
            info = sf.info(str(path))
            assert (reader.sample_rate, reader.channels, reader.frames) == (info.samplerate, info.channels, info.frames)
            depths.add(reader.bits_per_sample)
            for start, n in windows_of(reader.frames):
                got = reader.read(start, n)
                expected = libsndfile_window(path, start, n)
                assert got.dtype == np.float32 and got.shape == expected.shape, (path.name, start, n)
                np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} [{start}, +{n})")
    assert depths == {16, 24}


def test_file_objects_and_tar_members_read_like_the_path(tmp_path):
    path = write_audio(tmp_path / "stereo.flac", tone(5.0, 44100, freq=330.0, channels=2))
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "stereo.flac", arcname="a/stereo.flac")
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("a/stereo.flac")
    expected = libsndfile_window(path, 100_000, 50_000)

    with open(path, "rb") as f, flac.FlacReader(f) as reader:  # size found by seeking
        np.testing.assert_array_equal(reader.read(100_000, 50_000), expected)
    with open(path, "rb") as f, flac.FlacReader(io.BufferedReader(f), size=path.stat().st_size) as reader:
        np.testing.assert_array_equal(reader.read(100_000, 50_000), expected)
    with AudioFile(InputAudio(str(tar_path), member.size, member.offset_data)) as audio:
        assert audio.backend == "libflac"
        np.testing.assert_array_equal(audio.read(100_000, 50_000), expected)


def test_audio_file_uses_libflac_for_flac_and_libsndfile_when_turned_off(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "a.flac", tone(3.0, 44100, channels=2))
    with AudioFile(InputAudio(str(path), path.stat().st_size)) as audio:
        assert audio.backend == "libflac"
        direct = audio.read(30_000, 40_000)
    monkeypatch.setenv(flac.LIBRARY_ENV, "off")
    assert not flac.available()
    with AudioFile(InputAudio(str(path), path.stat().st_size)) as audio:
        assert audio.backend == "soundfile"
        np.testing.assert_array_equal(np.ascontiguousarray(audio.read(30_000, 40_000)), direct)


def test_a_library_that_does_not_load_leaves_flac_to_libsndfile(tmp_path, monkeypatch):
    monkeypatch.setenv(flac.LIBRARY_ENV, str(tmp_path / "no-such-libFLAC.so"))
    assert flac.library() is None
    path = write_audio(tmp_path / "a.flac", tone(1.0))
    with AudioFile(InputAudio(str(path), path.stat().st_size)) as audio:
        assert audio.backend == "soundfile" and audio.read(0, 100).shape == (1, 100)


def test_truncated_file_reads_up_to_the_cut_then_fails_clearly(tmp_path):
    path = write_audio(tmp_path / "long.flac", tone(30.0, 44100, freq=200.0))
    cut = tmp_path / "cut.flac"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with flac.FlacReader(str(cut)) as reader:
        assert reader.frames == 30 * 44100  # STREAMINFO still promises all of it
        np.testing.assert_array_equal(reader.read(44100, 44100), libsndfile_window(path, 44100, 44100))
        with pytest.raises(flac.FlacError):
            reader.read(25 * 44100, 44100)
        # The decoder recovers from the failed seek: an earlier window still reads.
        np.testing.assert_array_equal(reader.read(0, 1000), libsndfile_window(path, 0, 1000))
    with AudioFile(InputAudio(str(cut), cut.stat().st_size)) as audio:
        with pytest.raises(DecodeError, match="truncated or corrupt"):
            audio.read(25 * 44100, 44100)


def test_damaged_frames_are_an_error_not_silence(tmp_path):
    path = write_audio(tmp_path / "a.flac", tone(4.0, 44100, freq=300.0))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zeroes inside a frame: its CRC no longer matches
    broken = tmp_path / "broken.flac"
    broken.write_bytes(bytes(data))
    with flac.FlacReader(str(broken)) as reader:
        with pytest.raises(flac.FlacError, match="libFLAC: "):
            reader.read(0, reader.frames)


def test_flac_magic_without_a_flac_stream_falls_back_and_fails_clearly(tmp_path):
    path = tmp_path / "fake.flac"
    path.write_bytes(flac.FLAC_MAGIC + b"\x00" * 100)
    with pytest.raises(flac.FlacError):
        flac.FlacReader(str(path))
    with pytest.raises(DecodeError, match="undecodable"):
        AudioFile(InputAudio(str(path), path.stat().st_size))


def test_a_storage_error_mid_window_is_retryable_not_corrupt(tmp_path):
    from ray_pipelines.audio.decode import is_retryable

    path = write_audio(tmp_path / "a.flac", tone(20.0, 44100))
    with FailingAfter(path, path.stat().st_size // 2) as source, flac.FlacReader(source) as reader:
        np.testing.assert_array_equal(reader.read(0, 44100), libsndfile_window(path, 0, 44100))
        with pytest.raises(flac.FlacReadError, match="ConnectionError: connection reset"):
            reader.read(15 * 44100, 44100)
    # AudioFile turns it into a retryable reason (the input is tried again on the next run).
    size = path.stat().st_size
    with AudioFile(InputAudio(str(path), size)) as audio, FailingAfter(path, size // 2) as source:
        audio._flac.close()
        audio._flac = flac.FlacReader(source)  # the same file behind a connection that drops
        with pytest.raises(DecodeError) as error:
            audio.read(15 * 44100, 44100)
    assert str(error.value).startswith("unreadable: ") and is_retryable(str(error.value))


def test_a_storage_error_at_the_magic_probe_is_retryable(tmp_path):
    from ray_pipelines.audio.decode import is_retryable

    path = write_audio(tmp_path / "a.flac", tone(2.0))
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(path, arcname="a.flac")
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("a.flac")
    with (
        AudioFile(InputAudio(str(tar_path), member.size, member.offset_data)) as audio,
        FailingAfter(tar_path, 0) as dropped,
    ):
        audio._raw.close()
        audio._raw = dropped  # the shard behind a connection that drops at once
        with pytest.raises(DecodeError) as error:
            audio._open()
    assert str(error.value).startswith("unreadable: ConnectionError") and is_retryable(str(error.value))
