"""The features job against the seed notebook's own numbers, on real songs (no Ray).

The notebook loads a song with ``librosa.load(path, sr=16000)`` (the whole file, resampled once
with soxr HQ), cuts snippet k of 6 at sample ``k * (len // 6)`` (its loop
``range(0, len - len % 6, len // 6)``) and calls ``ASTFeatureExtractor`` on each. The job's
``snippet_rule: seed`` must give the same positions and count for every song length, and its
windows (a margin decoded around each, resampled, trimmed) the same audio and features.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from ray_pipelines.audio.decode import AudioFile, InputAudio, load_window
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob
from ray_pipelines.stages.features import FeaturesStage
from tests.audio_helpers import SHARED_AUDIO

librosa = pytest.importorskip("librosa")  # the notebook's loader (installed with torchcrepe)
SNIPPET = 163840  # 10.24 s at 16 kHz


def write_chunked(path, audio: np.ndarray, rate: int, fmt: str, subtype: str) -> None:
    """Encode in blocks: libsndfile's Vorbis encoder crashes on one multi-minute write."""
    with sf.SoundFile(str(path), "w", rate, audio.shape[1], format=fmt, subtype=subtype) as f:
        for i in range(0, len(audio), 65536):
            f.write(audio[i : i + 65536])


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, str]:
    """Real songs shorter than a snippet, just above one, and minutes long (the sonic-pi loops end
    to end), in FLAC, MP3, Ogg Vorbis and WAV at 44.1, 48 and 22.05 kHz."""
    loops = SHARED_AUDIO / "sonic-pi" / "loop"
    if not loops.exists():
        pytest.skip("real recordings not found")
    root = tmp_path_factory.mktemp("songs")
    parts = [sf.read(str(p), dtype="float32", always_2d=True)[0] for p in sorted(loops.glob("*.flac"))]
    long = np.concatenate(parts * 3)  # about 2.7 minutes at 44.1 kHz stereo
    write_chunked(root / "long.mp3", long[: 44100 * 130], 44100, "MP3", "MPEG_LAYER_III")
    middle = long[: 44100 * 40]
    write_chunked(root / "mid48.ogg", soxr.resample(middle, 44100, 48000, "HQ"), 48000, "OGG", "VORBIS")
    write_chunked(root / "mid22.wav", soxr.resample(middle, 44100, 22050, "HQ"), 22050, "WAV", "FLOAT")
    return {
        "short.flac": str(loops / "loop_garzul.flac"),  # 8.0 s
        "just_above.flac": str(loops / "loop_tabla.flac"),  # 10.67 s
        "long.mp3": str(root / "long.mp3"),
        "mid48.ogg": str(root / "mid48.ogg"),
        "mid22.wav": str(root / "mid22.wav"),
    }


def job_parts():
    job = FeaturesJob(FeaturesConfig(input="-", output="-"))
    assert job.config.snippet_rule == "seed"  # the default: a notebook user gets its dataset
    return job.decoder(), FeaturesStage(**job.stages()[0].kwargs)


def test_seed_rule_positions_and_count_on_real_songs(songs):
    decoder, _ = job_parts()
    for name, path in songs.items():
        song, _ = librosa.load(path, sr=16000)
        n = len(song)
        expected = list(range(0, n - n % 6, n // 6))  # the notebook's loop
        with AudioFile(InputAudio(path)) as audio_file:
            windows = decoder.plan(name, audio_file.duration)
        assert len(windows) == 6, name
        assert [round(w.start * 16000) for w in windows] == expected, name


def test_windows_equal_the_whole_file_resampled_once(songs):
    """Audio to float32 rounding of the resampler (a few ulps); features to 1e-4 but for a few
    values in bins near the log floor, where a one-ulp change of the audio alone moves a feature
    by up to 2.5e-4 (measured on these songs): there only a bit-identical resampling, aligned to
    soxr's internal block grid, could agree to 1e-4 (docs/features.md, *Resampling*)."""
    transformers = pytest.importorskip("transformers")
    decoder, stage = job_parts()
    extractor = transformers.ASTFeatureExtractor()  # the notebook's: 128 bins, 1024 frames
    for name, path in songs.items():
        song, _ = librosa.load(path, sr=16000)
        with AudioFile(InputAudio(path)) as audio_file:
            windows = decoder.plan(name, audio_file.duration)
            cut = [load_window(audio_file, w.start, 10.24, 16000) for w in windows]
        audio = np.stack([a for a, _ in cut])
        valid = np.array([v for _, v in cut])
        values = np.zeros((len(cut), 1024, 128), dtype=np.float32)
        stage.compute_into(values, audio, valid, np.arange(len(cut)))
        for (window_audio, count), features, window in zip(cut, values, windows):
            start = round(window.start * 16000)
            reference = song[start : start + SNIPPET]  # what the notebook cuts
            assert count == len(reference), name
            assert np.abs(window_audio[:count] - reference).max() < 1e-6, name
            assert not window_audio[count:].any()
            expected = extractor(reference, sampling_rate=16000, return_tensors="np")["input_values"][0]
            difference = np.abs(features - expected)
            assert np.mean(difference > 1e-4) < 1e-3, name  # at most a few hundred of 131072 values
            assert difference.max() < 1e-3, name
