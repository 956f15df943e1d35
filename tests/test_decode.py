"""Decoding real encoded files: formats, windows, partial reads, clear failures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from ray_pipelines.audio.decode import (
    AudioFile,
    DecodeError,
    InputAudio,
    check_finite,
    check_not_silent,
    conform_channels,
    crop_or_pad,
    is_retryable,
    load_window,
)
from ray_pipelines.sources import list_inputs
from tests.audio_helpers import (
    FORMATS,
    SHARED_AUDIO,
    FailingAfter,
    tone,
    write_aac,
    write_audio,
    write_mp3_without_length,
    write_tar,
)


def open_path(path) -> AudioFile:
    return AudioFile(InputAudio(str(path), path.stat().st_size))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_decodes_to_the_same_tone(tmp_path, fmt):
    path = write_audio(tmp_path / f"a.{fmt}", tone(2.0, 44100, freq=441.0))
    with open_path(path) as f:
        assert f.sample_rate == 44100 and f.channels == 1
        window, valid = load_window(f, 0.5, 1.0, 22050)
    assert window.shape == (22050,) and valid == 22050
    # The dominant frequency survives every codec and the resampler.
    spectrum = np.abs(np.fft.rfft(window))
    assert abs(np.argmax(spectrum) * 22050 / len(window) - 441.0) <= 2.0


def test_window_matches_the_same_slice_of_a_full_decode(tmp_path):
    audio = tone(6.0, 16000, freq=300.0, channels=2)
    path = write_audio(tmp_path / "stereo.flac", audio, 16000)
    with open_path(path) as f:
        window, valid = load_window(f, 2.0, 1.5, 16000, channels=2)
    expected = sf.read(str(path), dtype="float32")[0][32000:56000].T
    assert window.shape == (2, 24000) and valid == 24000
    np.testing.assert_array_equal(window, expected)


def test_long_file_is_read_partially_not_decoded_whole(tmp_path):
    """A window near the start decodes even though the file's tail is cut off:
    the decoder only read what the window needed."""
    path = write_audio(tmp_path / "long.flac", tone(60.0, 44100, freq=200.0))
    data = path.read_bytes()
    cut = tmp_path / "long_cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    with open_path(cut) as f:
        assert f.duration == pytest.approx(60.0)  # the header still promises 60 s
        window, _ = load_window(f, 5.0, 3.0, 22050)
        assert np.abs(window).max() > 0.3
        with pytest.raises(DecodeError, match="truncated|corrupt"):
            load_window(f, 50.0, 3.0, 22050)


def test_short_file_is_zero_padded_and_reports_valid_samples(tmp_path):
    path = write_audio(tmp_path / "short.wav", tone(0.5, 44100))
    with open_path(path) as f:
        window, valid = load_window(f, 0.0, 2.0, 22050)
    assert window.shape == (44100,)
    assert valid == 11025
    assert np.all(window[11100:] == 0) and np.abs(window[:11000]).max() > 0.3


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.wav", b"", "empty file"),
        ("text.wav", b"this is not audio\n" * 20, "undecodable"),
    ],
)
def test_bad_files_raise_clear_reasons(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        open_path(path)


def unwritten_lengths(wav: bytes) -> bytes:
    """A WAV as a recorder leaves it when it stops before writing the lengths: both sizes 0."""
    data = wav.find(b"data")
    crashed = bytearray(wav)
    crashed[4:8] = crashed[data + 4 : data + 8] = (0).to_bytes(4, "little")
    return bytes(crashed)


@pytest.mark.parametrize(
    "subtype, channels, backend",
    [("PCM_16", 1, "soundfile"), ("PCM_24", 2, "soundfile"), ("FLOAT", 2, "soundfile"), ("IMA_ADPCM", 1, "pyav")],
)
def test_a_wav_whose_lengths_were_never_written_is_read_to_its_end(tmp_path, subtype, channels, backend):
    """A recorder that crashed (or a card pulled) leaves the RIFF and data sizes 0: libsndfile found no
    frames, so a 2 s recording was the error row `too short: 0.000 s`. PCM is read as raw samples, a
    window at a time (a long recording never whole in memory); a compressed WAV through FFmpeg."""
    audio = tone(2.0, 16000, channels=channels)
    whole = tmp_path / "whole.wav"
    sf.write(str(whole), audio, 16000, subtype=subtype)
    path = tmp_path / "crashed.wav"
    path.write_bytes(unwritten_lengths(whole.read_bytes()))
    with open_path(whole) as f:
        frames = f.frames
        expected, _ = load_window(f, 0.5, 1.0, 16000, channels=channels)
    with open_path(path) as f:
        assert (f.frames, f.sample_rate, f.channels, f.backend) == (frames, 16000, channels, backend)
        window, valid = load_window(f, 0.5, 1.0, 16000, channels=channels)
    assert valid == 16000
    np.testing.assert_array_equal(window, expected)


def test_a_wav_without_lengths_in_a_tar_shard_and_one_without_samples(tmp_path):
    whole = write_audio(tmp_path / "whole.wav", tone(2.0, 16000), 16000)
    shard = write_tar(tmp_path / "s.tar", {"a.flac": b"x" * 1000, "crashed.wav": unwritten_lengths(whole.read_bytes())})
    (member,) = [i for i in list_inputs(str(shard), ["wav"])]
    with AudioFile(InputAudio(member.uri, member.size, member.member_offset)) as f:
        window, valid = load_window(f, 1.0, 1.0, 16000)
        assert (f.frames, f.backend, valid) == (32000, "soundfile", 16000)
    with open_path(whole) as f:
        np.testing.assert_array_equal(window, load_window(f, 1.0, 1.0, 16000)[0])
    crashed = unwritten_lengths(whole.read_bytes())
    header_only = tmp_path / "header_only.wav"
    header_only.write_bytes(crashed[: crashed.find(b"data") + 8])  # no samples at all: as before, no frames
    with open_path(header_only) as f:
        assert (f.frames, f.backend) == (0, "soundfile")


def test_a_wav_of_more_than_4_gib_whose_lengths_wrapped_is_read_to_its_end(tmp_path):
    """A WAV's lengths are 32-bit: a plain WAV with 4 GiB of samples or more (FFmpeg writes one unless
    asked for RF64) holds its data length modulo 4 GiB, and libsndfile read that much: of this
    12.4-hour recording, its first 2 seconds. A sparse file: 4 GiB of silence on disk in a few KiB."""
    end = tone(2.0, 48000)
    tail = (end * 32767).astype("<i2").tobytes()
    header = bytearray(write_audio(tmp_path / "short.wav", end, 48000).read_bytes()[:44])
    assert header[36:40] == b"data"
    data_bytes = 2**32 + len(tail)
    header[4:8] = ((36 + data_bytes) % 2**32).to_bytes(4, "little")
    header[40:44] = (data_bytes % 2**32).to_bytes(4, "little")  # as FFmpeg leaves it: wrapped
    path = tmp_path / "day.wav"
    with open(path, "wb") as f:
        f.write(header)
        f.seek(44 + 2**32)
        f.write(tail)
    assert sf.info(str(path)).frames == len(end)  # libsndfile: the wrapped length
    with open_path(path) as f:
        assert (f.frames, f.backend) == (data_bytes // 2, "soundfile")
        window, valid = load_window(f, f.frames / 48000 - 1.5, 1.0, 48000)
        assert valid == 48000 and not load_window(f, 3600.0, 1.0, 48000)[0].any()
    np.testing.assert_array_equal(window, np.frombuffer(tail, "<i2")[24000:72000] / np.float32(32768))


def test_a_flac_whose_header_gives_no_length_is_decoded_to_its_end(tmp_path):
    """A FLAC encoded to a pipe (``ffmpeg ... -f flac -``, ``flac -`` from stdin) has 0 total samples in its
    STREAMINFO: libsndfile said 2^63 - 1 frames, every window was `truncated or corrupt: Internal
    psf_fseek() failed.`, and a plan of every window that fits would never have ended."""
    import av

    whole = tmp_path / "whole.flac"
    with av.open(str(whole), "w", format="flac") as container:  # FFmpeg's FLAC, as a pipe's would be
        stream = container.add_stream("flac", rate=16000)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(tone(3.0, 16000, channels=2).T.copy(), format="fltp", layout="stereo")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    streamed = bytearray(whole.read_bytes())
    streamed[21] &= 0xF0  # STREAMINFO's 36-bit total samples: the low 4 bits of byte 21, bytes 22-25
    streamed[22:26] = bytes(4)
    path = tmp_path / "streamed.flac"
    path.write_bytes(bytes(streamed))
    with open_path(whole) as f:
        expected = load_window(f, 1.0, 1.5, 22050, channels=2)
    with open_path(path) as f:
        assert (f.frames, f.channels, f.backend) == (48000, 2, "pyav")
        window, valid = load_window(f, 1.0, 1.5, 22050, channels=2)
    assert valid == expected[1] and window.tobytes() == expected[0].tobytes()


def test_an_mp3_that_does_not_state_its_length_is_read_to_its_end(tmp_path):
    """Without a Xing/Info frame libsndfile estimates an MP3's length from its size and its first frame's
    bitrate, and reads no further: a few frames long at a constant bitrate (every window reaching the end
    was 'truncated: header promises 311593 frames, decoding stopped at 309888'), and at a variable one far
    short, without an error: 1.7 s of this 10 s file. FFmpeg reads such a file to its end."""
    rng = np.random.default_rng(0)
    loud_then_quiet = np.concatenate([0.5 * rng.standard_normal(2 * 44100), tone(8.0, amplitude=0.001)])
    for path, audio in (
        (write_mp3_without_length(tmp_path / "rip.mp3", tone(7.0)), tone(7.0)),
        (write_mp3_without_length(tmp_path / "vbr.mp3", loud_then_quiet.astype(np.float32), vbr=True), loud_then_quiet),
    ):
        estimate = sf.info(str(path)).frames
        with open_path(path) as f:
            assert f.backend == "pyav" and len(audio) <= f.frames < len(audio) + 2 * 1152  # + the encoder's delay
            last = (f.frames - 44100) / 44100
            window, valid = load_window(f, last, 2.0, 44100)  # runs past the end
            assert valid == 44100 and not window[valid:].any() and np.abs(window[:valid]).max() > 0
            with pytest.raises(DecodeError, match=r"^past the end: the window starts at"):
                load_window(f, f.duration + 0.1, 0.5, 44100)
        assert (estimate > f.frames) if path.name == "rip.mp3" else (estimate < 0.2 * f.frames)
    stated = write_audio(tmp_path / "lame.mp3", tone(7.0))  # libsndfile's LAME writes an Info frame
    with open_path(stated) as f:
        assert (f.backend, f.frames) == ("soundfile", 7 * 44100)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(stated.read_bytes()[: stated.stat().st_size // 2])
    with open_path(cut) as f:  # a length stated and not there: truncated, as before
        with pytest.raises(DecodeError, match="^truncated"):
            load_window(f, 5.0, 1.0, 44100)


def test_a_packet_ffmpeg_refuses_is_passed_over_not_the_whole_file(tmp_path):
    """Two MP3s without lengths from FFmpeg's LAME and one from libsndfile's, joined: FFmpeg's decoder
    refuses the packet where the first two meet, and PyAV's ``container.decode`` raised it, so the whole
    9 s file was an error row. The packet is passed over, as the ``ffmpeg`` command does."""
    parts = [
        write_mp3_without_length(tmp_path / "1.mp3", tone(3.0)),
        write_mp3_without_length(tmp_path / "2.mp3", tone(3.0, freq=660.0, seed=1)),
        write_audio(tmp_path / "3.mp3", tone(3.0, freq=880.0, seed=2)),
    ]
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    with open_path(joined) as f:
        assert f.backend == "pyav" and 9 * 44100 <= f.frames < 9.2 * 44100
        window, valid = load_window(f, 7.5, 1.0, 44100)
    assert valid == 44100 and abs(np.argmax(np.abs(np.fft.rfft(window))) * 44100 / len(window) - 880.0) <= 2.0


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
def test_files_joined_end_to_end_are_read_to_the_end_of_the_last(tmp_path, fmt):
    """MP3s joined by ``cat`` (an audiobook's chapters, a DJ set) keep the first file's Info frame, which
    counts the first file's frames alone; an Ogg file may chain streams (an internet radio recording, a
    stream per track; Ogg files joined by ``cat``). libsndfile read the first file alone, and every later
    recording was lost without an error row. Where frames (or another MP3's tag) follow the stream size
    the Info frame gives, or the last Ogg page is another stream's, FFmpeg reads the file to its end."""
    first = write_audio(tmp_path / f"first.{fmt}", tone(3.0, 44100, freq=440.0))
    second = write_audio(tmp_path / f"second.{fmt}", tone(3.0, 44100, freq=660.0, seed=1))
    joined = tmp_path / f"joined.{fmt}"
    joined.write_bytes(first.read_bytes() + second.read_bytes())  # libsndfile's MP3s end with an ID3v1 tag
    assert sf.info(str(joined)).frames == 3 * 44100  # the first file's length
    with open_path(joined) as f:
        assert f.backend == "pyav" and 6 * 44100 <= f.frames < 6.2 * 44100
        window, valid = load_window(f, 4.0, 1.0, 44100)  # inside the second recording
    spectrum = np.abs(np.fft.rfft(window))
    assert valid == 44100 and abs(np.argmax(spectrum) * 44100 / len(window) - 660.0) <= 2.0
    with AudioFile(InputAudio(str(joined))) as f:  # opened by hand, without the listing's size: the file's
        assert (f.size, f.backend) == (joined.stat().st_size, "pyav")
    shard = write_tar(tmp_path / "s.tar", {joined.name: joined.read_bytes()})
    (member,) = list_inputs(str(shard), [fmt])
    with AudioFile(InputAudio(member.uri, member.size, member.member_offset)) as f:  # a tar member's bytes
        np.testing.assert_array_equal(load_window(f, 4.0, 1.0, 44100)[0], window)
    for alone in (first, second):  # the length a file gives is kept where it is the file's
        with open_path(alone) as f:
            assert (f.backend, f.frames) == ("soundfile", 3 * 44100)


def test_joined_parts_of_another_rate_or_channels_are_converted_to_the_first_or_refused(tmp_path):
    """MP3s of two rates joined: FFmpeg's frames changed rate halfway, and the whole file was labelled
    with the last one's (the first part played 9 % fast); of mono and stereo parts, concatenating the
    frames raised a ValueError. An Ogg chain whose streams change rate FFmpeg cannot read: a clear error
    row, not FFmpeg's 'Not yet implemented'."""
    first = write_audio(tmp_path / "first.mp3", tone(2.0, 44100, freq=440.0))
    for name, second in (
        ("rate", write_audio(tmp_path / "second.mp3", tone(2.0, 48000, freq=660.0, seed=1), 48000)),
        ("channels", write_audio(tmp_path / "stereo.mp3", tone(2.0, 44100, freq=660.0, channels=2, seed=1))),
    ):
        joined = tmp_path / f"joined_{name}.mp3"
        joined.write_bytes(first.read_bytes() + second.read_bytes())
        with open_path(joined) as f:
            assert (f.backend, f.sample_rate, f.channels) == ("pyav", 44100, 1)
            assert 4 * 44100 <= f.frames < 4.2 * 44100, name  # the second part at the first's rate
            early, _ = load_window(f, 0.5, 1.0, 44100)
            late, _ = load_window(f, 2.8, 1.0, 44100)
        for window, freq in ((early, 440.0), (late, 660.0)):
            assert abs(np.argmax(np.abs(np.fft.rfft(window))) * 44100 / len(window) - freq) <= 2.0, name
    chain = tmp_path / "chain.ogg"
    chain.write_bytes(
        write_audio(tmp_path / "a.ogg", tone(2.0, 44100)).read_bytes()
        + write_audio(tmp_path / "b.ogg", tone(2.0, 22050), 22050).read_bytes()
    )
    with pytest.raises(
        DecodeError,
        match=r"^undecodable: a chained Ogg \(streams one after another\), which FFmpeg cannot read to its end "
        r".*; split it into its streams$",
    ):
        open_path(chain)


def test_a_long_file_ffmpeg_decodes_whole_goes_to_a_temporary_file_with_the_same_samples(tmp_path, monkeypatch):
    """FFmpeg's formats are decoded whole: a list of decoded chunks and their concatenation held an hour
    of 48 kHz stereo AAC twice (2.8 GB), so an audiobook of many hours did not fit in a worker. Past
    ``pyav.SPILL_BYTES`` the frames go to a temporary file that libsndfile reads a window at a time."""
    from ray_pipelines.audio import pyav

    path = write_aac(tmp_path / "book.m4b", tone(4.0, 48000, channels=2), 48000)
    joined = tmp_path / "joined.mp3"  # MP3s joined: the container's duration is the first one's
    joined.write_bytes(b"".join(write_audio(tmp_path / f"{i}.mp3", tone(3.0, seed=i)).read_bytes() for i in (1, 2)))
    starts = (0.0, 1.7, 3.5)
    with open_path(path) as f:  # in memory
        assert (f.backend, f._pyav.spilled) == ("pyav", None)
        frames, expected = f.frames, [load_window(f, start, 1.0, 16000, channels=2) for start in starts]
    with open_path(joined) as f:
        joined_frames = f.read(0, f.frames).copy()
    monkeypatch.setattr(pyav, "SPILL_BYTES", 64 * 1024)  # 8,192 stereo frames in memory at most
    with open_path(path) as f:
        decoded = f._pyav
        assert (f.backend, f._decoded, f.frames) == ("pyav", None, frames) and decoded.spilled is not None
        for start, (window, valid) in zip(starts, expected):
            got, got_valid = load_window(f, start, 1.0, 16000, channels=2)
            assert got_valid == valid
            np.testing.assert_array_equal(got, window)
    assert decoded.spill_file.closed  # a temporary file: gone with it
    with open_path(joined) as f:  # its buffer grown past the duration the container gave, then spilled
        assert f._pyav.spilled is not None
        np.testing.assert_array_equal(f.read(0, f.frames), joined_frames)
    chain = tmp_path / "chain.ogg"  # FFmpeg fails at its second stream, after the first one spilled
    chain.write_bytes(
        b"".join(write_audio(tmp_path / f"{r}.ogg", tone(2.0, r), r).read_bytes() for r in (44100, 22050))
    )
    files_open = len(os.listdir("/proc/self/fd"))
    with pytest.raises(DecodeError, match="^undecodable: a chained Ogg") as failed:
        open_path(chain)
    assert failed.value.__context__ is not None  # FFmpeg's error, and the frames that held the samples, alive
    assert len(os.listdir("/proc/self/fd")) == files_open  # its temporary file closed all the same


def test_an_mp3_from_object_storage_decodes_as_from_disk(tmp_path, s3_bucket):
    """From an object store libsndfile reads through the same file object the MP3 length check reads
    from; the check left it moved, and the decoder read on from there: `truncated: header promises
    308700 frames, decoding stopped at 47`, or the wrong samples. Files joined end to end too (their
    checks read the file's tail), and an MP3 without its length (FFmpeg reading the object store's file)."""
    bucket, options, fs = s3_bucket
    audio = tone(7.0, 44100)
    joined = {}
    for fmt in ("mp3", "ogg"):
        joined[fmt] = tmp_path / f"joined.{fmt}"
        halves = [write_audio(tmp_path / f"{half}.{fmt}", tone(3.5, 44100, seed=half)) for half in (1, 2)]
        joined[fmt].write_bytes(halves[0].read_bytes() + halves[1].read_bytes())  # two Ogg serial numbers
    lame, rip = write_audio(tmp_path / "lame.mp3", audio), write_mp3_without_length(tmp_path / "rip.mp3", audio)
    for path in (lame, rip, *joined.values()):
        fs.put(str(path), f"{bucket}/{path.name}")
        with open_path(path) as f:
            expected = [load_window(f, start, 2.0, 44100) for start in (0.0, 3.0, 6.0)]
        with AudioFile(InputAudio(f"s3://{bucket}/{path.name}", path.stat().st_size), options) as f:
            assert f.backend == ("soundfile" if path == lame else "pyav")
            windows = [load_window(f, start, 2.0, 44100) for start in (0.0, 3.0, 6.0)]
        for (window, valid), (want, want_valid) in zip(windows, expected):
            assert valid == want_valid
            np.testing.assert_allclose(window, want, atol=1e-6)  # mpg123 after a seek


@pytest.mark.parametrize("name", ["long.wav", "long.flac", "long.ogg", "long.mp3", "long.m4a"])
def test_a_connection_that_drops_mid_file_is_retryable_not_corrupt(tmp_path, monkeypatch, name):
    """From object storage a read that fails (a connection reset after s3fs's own retries) reached
    libsndfile and FFmpeg as the end of the file: a WAV's window was `truncated: header promises ...` and
    an m4a FFmpeg's own message, both committed as final error rows and never tried again. The failure
    is kept as it passes, and the input is `unreadable: ...`, tried again on the next run."""
    from ray_pipelines.audio import decode

    audio = tone(20.0, 44100)
    path = write_aac(tmp_path / name, audio) if name.endswith(".m4a") else write_audio(tmp_path / name, audio)
    size = path.stat().st_size

    class DroppingStore:  # an object store whose connection drops halfway through the file
        protocol = ("s3",)

        def open(self, _path, mode="rb"):
            return FailingAfter(path, size // 2)

    monkeypatch.setattr(decode, "get_fs", lambda uri, options=None: (DroppingStore(), str(path)))
    with pytest.raises(DecodeError) as failed:
        with AudioFile(InputAudio(f"s3://bucket/{name}", size)) as f:
            load_window(f, 1.0, 1.0, 16000)  # before the drop: read
            load_window(f, 15.0, 1.0, 16000)
    assert str(failed.value).startswith("unreadable: ConnectionError: connection reset by peer")
    assert is_retryable(str(failed.value))
    # What will not heal by itself (fsspec's HTTP store on a server without range requests) stays final.
    no_ranges = ValueError("The HTTP server doesn't appear to support range requests.")
    DroppingStore.open = lambda self, _path, mode="rb": FailingAfter(path, size // 2, no_ranges)
    with pytest.raises(DecodeError) as failed:
        with AudioFile(InputAudio(f"s3://bucket/{name}", size)) as f:
            load_window(f, 15.0, 1.0, 16000)
    assert not is_retryable(str(failed.value)), str(failed.value)


def test_truncated_flac_is_an_error(tmp_path):
    path = write_audio(tmp_path / "t.flac", tone(2.0))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DecodeError, match="truncated|corrupt|undecodable"):
        with open_path(path) as f:
            load_window(f, 0.0, 2.0, 44100)


def test_missing_file_is_retryable_error(tmp_path):
    with pytest.raises(DecodeError, match="^missing"):
        AudioFile(InputAudio(str(tmp_path / "nope.wav")))


def test_nan_and_silence_checks():
    with pytest.raises(DecodeError, match=r"^non-finite samples: NaN/inf values from 0\.250 s$"):
        check_finite(np.array([0.0, np.nan, 0.1], dtype=np.float32), 4)
    stereo = np.zeros((2, 100), dtype=np.float32)
    stereo[1, 30] = np.inf
    with pytest.raises(DecodeError, match=r"from 10\.300 s$"):
        check_finite(stereo, 100, start=10.0)
    with pytest.raises(DecodeError, match="silent"):
        check_not_silent(np.zeros(100, dtype=np.float32), -90.0)
    check_not_silent(np.zeros(100, dtype=np.float32), None)


def test_a_nan_sample_is_named_where_the_file_holds_it_not_where_resampling_spread_it(tmp_path):
    """soxr turns one NaN into NaNs over the whole chunk: checked after resampling, the message gave
    their count (thousands) for a file with one bad sample, and a window's first could be its start."""
    samples = tone(2.0, 16000)
    samples[8000] = np.nan  # at 0.5 s
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with open_path(path) as f:
        with pytest.raises(DecodeError, match=r"^non-finite samples: NaN/inf values from 0\.500 s$"):
            load_window(f, 0.0, 1.0, 22050)
        window, _ = load_window(f, 1.0, 1.0, 22050)  # the window after it is read
        assert np.isfinite(window).all()
    check_not_silent(np.full(100, 0.1, dtype=np.float32), -90.0)


def test_pyav_fallback_decodes_aac(tmp_path):
    path = write_aac(tmp_path / "clip.m4a", tone(1.0, 44100, 440.0))
    with open_path(path) as f:
        assert f.backend == "pyav"
        window, _ = load_window(f, 0.2, 0.5, 22050)
    spectrum = np.abs(np.fft.rfft(window))
    assert abs(np.argmax(spectrum) * 22050 / len(window) - 440.0) <= 4.0


def test_channel_conforming():
    stereo = np.stack([np.ones(4), 3 * np.ones(4)]).astype(np.float32)
    np.testing.assert_array_equal(conform_channels(stereo, None), 2 * np.ones(4))
    assert conform_channels(stereo[:1], 2).shape == (2, 4)
    # one channel of two is their mean, as stable-audio-tools' Mono (it was the left one)
    np.testing.assert_array_equal(conform_channels(stereo, 1), 2 * np.ones((1, 4)))
    np.testing.assert_array_equal(conform_channels(np.stack([stereo[0], stereo[1], stereo[0]]), 2), stereo)
    np.testing.assert_array_equal(crop_or_pad(np.ones(3), 5), [1, 1, 1, 0, 0])


def test_real_recording_decodes():
    path = SHARED_AUDIO / "speech" / "sample.wav"
    if not path.exists():
        pytest.skip("shared audio missing")
    with open_path(path) as f:
        assert f.sample_rate == 16000 and f.duration == pytest.approx(30.0, abs=0.5)
        window, valid = load_window(f, 10.0, 3.0, 22050)
    assert window.shape == (66150,) and valid == 66150 and np.abs(window).max() > 0.01


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("rate", [44100, 22050])
def test_windows_of_a_file_decoded_whole_are_the_windows_read_one_by_one(tmp_path, fmt, rate):
    """Overlapping windows (the augment job's crops of a short clip) read from a file decoded
    once whole are the very samples each window's own read gives, at the file's rate and resampled."""
    audio = tone(4.0, 44100, freq=330.0, channels=2) * np.linspace(0.2, 1.0, 4 * 44100, dtype=np.float32)[:, None]
    path = write_audio(tmp_path / f"clip.{fmt}", audio)
    starts = [0.0, 0.37, 1.0, 2.5, 3.2]  # the last runs past the end: padded
    with open_path(path) as f:
        one_by_one = [load_window(f, start, 1.5, rate, channels=2) for start in starts]
    with open_path(path) as f:
        assert f.decode_whole()
        whole = [load_window(f, start, 1.5, rate, channels=2) for start in starts]
    for (a, valid_a), (b, valid_b) in zip(one_by_one, whole):
        assert valid_a == valid_b and a.tobytes() == b.tobytes()


def test_a_file_that_does_not_decode_whole_still_yields_the_windows_before_the_damage(tmp_path):
    path = write_audio(tmp_path / "long.flac", tone(20.0, 44100, freq=200.0))
    cut = tmp_path / "long_cut.flac"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with open_path(cut) as f:
        assert not f.decode_whole()
        window, _ = load_window(f, 2.0, 3.0, 22050)
        assert np.abs(window).max() > 0.3
        with pytest.raises(DecodeError, match="truncated|corrupt"):
            load_window(f, 15.0, 3.0, 22050)


def test_the_decoder_reads_a_short_clip_once_for_all_its_crops(tmp_path, monkeypatch):
    """Five 3 s crops of a 4 s clip: one read of the whole file, not five overlapping ones, and the
    same rows either way (whole-file decoding off: WHOLE_FILE_BYTES = 0)."""
    from ray_pipelines.audio import flac
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine import decode as engine_decode
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob

    path = write_audio(tmp_path / "clip.flac", tone(4.0, 44100, freq=220.0, channels=2))
    decoder = AugmentJob(validate_config(AugmentConfig, {"input": "-", "output": "-"})).decoder()
    batch = {"key": np.array(["clip.flac"], dtype=object), "uri": np.array([str(path)], dtype=object)}
    reads = []
    original = flac.FlacReader.read
    monkeypatch.setattr(flac.FlacReader, "read", lambda self, start, n: reads.append(n) or original(self, start, n))
    (whole,) = decoder(dict(batch))  # one piece
    assert reads == [4 * 44100]
    reads.clear()
    monkeypatch.setattr(engine_decode, "WHOLE_FILE_BYTES", 0)
    (one_by_one,) = decoder(dict(batch))
    assert len(reads) == 5 and sum(reads) > 3 * 4 * 44100
    assert len(whole["key"]) == 5 and list(whole) == list(one_by_one)
    for name in whole:
        np.testing.assert_array_equal(whole[name], one_by_one[name])
