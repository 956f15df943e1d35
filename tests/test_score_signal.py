"""The signal statistics: definitions checked on signals with known values and on real recordings (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from scipy import special

from ray_pipelines.scoring.scorers import Clips
from ray_pipelines.scoring.signal_stats import (
    COLUMNS,
    WADA_ALPHA,
    WADA_SNR_DB,
    SignalScorer,
    signal_statistics,
    wada_curve,
    wada_snr,
)
from tests import score_audio

RATE = 16000


def sine(freq: float = 1000.0, amplitude: float = 0.5, seconds: float = 1.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)


def test_levels_dc_clipping_and_silence_of_known_signals():
    stats = signal_statistics(sine(), RATE)
    assert list(stats) == list(COLUMNS)
    assert stats["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=1e-3)  # -6.02
    assert stats["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1e-6)  # -9.03
    assert stats["clipping_fraction"] == 0.0 and stats["silence_fraction"] == 0.0
    assert abs(stats["dc_offset"]) < 1e-12
    assert 1000 <= stats["bandwidth_hz"] < 1300  # the tone plus the window's leakage down to -60 dB

    shifted = signal_statistics(sine() + 0.1, RATE)
    assert shifted["dc_offset"] == pytest.approx(0.1)
    assert shifted["bandwidth_hz"] == stats["bandwidth_hz"]  # the DC is removed before the spectrum

    driven = np.clip(4 * sine(997.0), -1, 1)  # |2 sin| >= 0.99 on this share of a period (997 Hz: all phases)
    expected = 1 - 2 * np.arcsin(0.99 / 2) / np.pi
    assert signal_statistics(driven, RATE)["clipping_fraction"] == pytest.approx(expected, abs=1e-3)

    half_silent = np.concatenate([sine(), np.zeros(RATE)])  # 50 frames of tone, 50 of digital silence
    assert signal_statistics(half_silent, RATE)["silence_fraction"] == 0.5
    quiet = signal_statistics(sine(amplitude=10 ** (-70 / 20)), RATE)  # a tone at -73 dBFS RMS
    assert quiet["silence_fraction"] == 1.0 and quiet["rms_dbfs"] == pytest.approx(-73.01, abs=0.01)

    silence = signal_statistics(np.zeros(RATE), RATE)
    assert silence["peak_dbfs"] == silence["rms_dbfs"] == -160.0  # the floor, not -inf
    assert (silence["bandwidth_hz"], silence["snr_db"], silence["silence_fraction"]) == (0.0, -20.0, 1.0)
    with pytest.raises(ValueError, match="non-empty mono clip"):
        signal_statistics(np.zeros(0), RATE)


def test_the_wada_curve_matches_its_model():
    curve = wada_curve()
    assert len(curve) == len(WADA_SNR_DB) and np.all(np.diff(curve) > 0)
    # pure Gaussian noise: log(sqrt(2/pi)) + (euler_gamma + log 2) / 2
    assert curve[0] == pytest.approx(np.log(np.sqrt(2 / np.pi)) + (np.euler_gamma + np.log(2)) / 2, abs=2e-4)
    # clean speech alone (SNR -> inf) approaches log(alpha) - digamma(alpha) from below
    assert curve[-1] < np.log(WADA_ALPHA) - special.digamma(WADA_ALPHA) < curve[-1] + 0.03
    # against a Monte Carlo estimate of the model: Gamma(0.4) amplitudes with random signs plus noise
    rng = np.random.default_rng(0)
    n = 1_000_000
    speech = rng.gamma(WADA_ALPHA, 1.0, n) * rng.choice([-1.0, 1.0], n)
    for snr in (0, 10, 20):
        sigma = np.sqrt(WADA_ALPHA * (WADA_ALPHA + 1) / 10 ** (snr / 10))
        z = np.abs(speech + sigma * rng.standard_normal(n))
        assert np.log(z.mean()) - np.log(z).mean() == pytest.approx(curve[snr + 20], abs=3e-3)
        assert wada_snr(z) == pytest.approx(snr, abs=0.5)  # the estimator inverts it


def test_snr_clipping_and_bandwidth_order_real_recordings():
    clean = score_audio.clean_speech()
    noisy = signal_statistics(score_audio.with_noise(clean, snr_db=0.0), RATE)
    plain = signal_statistics(clean, RATE)
    assert plain["snr_db"] > 30 and abs(noisy["snr_db"]) < 3  # white noise at 0 dB reads about 0 dB
    assert (
        plain["clipping_fraction"]
        == 0.0
        < 0.001
        < signal_statistics(score_audio.clipped(clean), RATE)["clipping_fraction"]
    )
    # the speech is an upsampled telephone recording: nothing above 4 kHz
    assert 3500 < plain["bandwidth_hz"] < 4000 and noisy["bandwidth_hz"] == RATE / 2

    loop, rate = score_audio.music()
    full = signal_statistics(soxr.resample(loop, rate, RATE), RATE)["bandwidth_hz"]
    narrow = signal_statistics(soxr.resample(score_audio.band_limited(loop, rate), rate, RATE), RATE)["bandwidth_hz"]
    assert full > 7000 and narrow < 4000


def test_the_scorer_scores_each_clips_real_samples_at_the_jobs_rate():
    audio = np.zeros((2, RATE), dtype=np.float32)
    audio[0] = sine()
    audio[1, : RATE // 2] = sine(seconds=0.5)  # half a window of tone, the rest zero padding
    clips = Clips(keys=["a", "b"], items=[0, 0], sample_rate=RATE, audio=audio, lengths=np.array([RATE, RATE // 2]))
    out = SignalScorer()(clips)
    assert list(out) == list(COLUMNS) and all(v.dtype == np.float64 for v in out.values())
    assert out["silence_fraction"].tolist() == [0.0, 0.0]  # the padding is not scored
    assert out["rms_dbfs"][1] == pytest.approx(out["rms_dbfs"][0], abs=1e-3)
    strict = SignalScorer(silence_threshold_db=-5.0)(clips)
    assert strict["silence_fraction"].tolist() == [1.0, 1.0]
