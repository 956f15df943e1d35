"""Real recordings of known character for the built-in scorers' tests.

From ../shared/audio (read there, written only here): 10 s of the two-speaker telephone speech
recording (16 kHz, itself band-limited to about 3.9 kHz) and the CC0 tabla loop (44.1 kHz, full
band). Derived from them: the speech with white noise at 0 dB SNR, the speech driven 8x into
clipping, and the loop resampled to 8 kHz and back (nothing above 4 kHz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.audio_helpers import SHARED_AUDIO

SPEECH = SHARED_AUDIO / "speech" / "sample.wav"
MUSIC = SHARED_AUDIO / "sonic-pi" / "loop" / "loop_tabla.flac"
SPEECH_RATE = 16000


def _read(path: Path) -> tuple[np.ndarray, int]:
    if not path.exists():
        pytest.skip(f"real recording not found at {path}")
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def clean_speech() -> np.ndarray:
    """10 s of conversation (6-16 s into the recording: both speakers, short pauses), 16 kHz."""
    audio, rate = _read(SPEECH)
    assert rate == SPEECH_RATE
    return audio[6 * rate : 16 * rate]


def with_noise(clean: np.ndarray, snr_db: float = 0.0, seed: int = 0) -> np.ndarray:
    """``clean`` plus white Gaussian noise at ``snr_db`` (power ratio), scaled to peak at 0.9."""
    power = np.mean(clean.astype(np.float64) ** 2)
    noise = np.random.default_rng(seed).standard_normal(len(clean)) * np.sqrt(power / 10 ** (snr_db / 10))
    mixture = clean + noise
    return (mixture / np.abs(mixture).max() * 0.9).astype(np.float32)


def clipped(clean: np.ndarray, gain: float = 8.0) -> np.ndarray:
    return np.clip(clean * gain, -1.0, 1.0).astype(np.float32)


def music() -> tuple[np.ndarray, int]:
    """The tabla loop, mono, at its own 44.1 kHz."""
    return _read(MUSIC)


def band_limited(audio: np.ndarray, rate: int, via: int = 8000) -> np.ndarray:
    """``audio`` resampled to ``via`` Hz and back: nothing left above via / 2."""
    return soxr.resample(soxr.resample(audio, rate, via), via, rate).astype(np.float32)


def write_recordings(root: Path) -> dict[str, str]:
    """The clips as files under ``root`` (``train/<kind>/<name>``); returns ``{key: what it is}``."""
    speech = clean_speech()
    loop, loop_rate = music()
    clips = {
        "train/speech/clean.wav": (speech, SPEECH_RATE),
        "train/speech/noisy_0db.wav": (with_noise(speech), SPEECH_RATE),
        "train/speech/clipped.wav": (clipped(speech), SPEECH_RATE),
        "train/music/tabla.flac": (loop, loop_rate),
        "train/music/tabla_8k.flac": (band_limited(loop, loop_rate), loop_rate),
    }
    for key, (audio, rate) in clips.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / key), audio, rate, subtype="PCM_16")
    return {key: key.rsplit("/", 1)[1].split(".")[0] for key in clips}


def write_short(path: Path, seconds: float) -> Path:
    """A real but short file: the first ``seconds`` of the speech."""
    sf.write(str(path), clean_speech()[: int(seconds * SPEECH_RATE)], SPEECH_RATE, subtype="PCM_16")
    return path
