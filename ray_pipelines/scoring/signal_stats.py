"""Signal statistics of a clip, computed together from its samples and one set of frames (NumPy only).

Definitions (``x`` = the clip's samples, full scale = 1.0; docs/score.md has them with the reasons):

- ``peak_dbfs`` = 20·log10(max |x|); ``rms_dbfs`` = 20·log10(sqrt(mean x²)) (a full-scale sine
  reads -3.01). Levels are floored at -160 dBFS (amplitude 1e-8) so digital silence stays finite.
- ``clipping_fraction``: share of samples with |x| >= ``clip_level`` (0.99 of full scale).
- ``dc_offset``: mean(x), in full-scale units.
- ``silence_fraction``: share of ``frame_seconds`` frames whose RMS level is below
  ``silence_threshold_db`` dBFS.
- ``bandwidth_hz``: the highest frequency whose long-term average power (Hann-windowed frames of
  ``n_fft`` samples, half overlapping, DC removed) is within ``bandwidth_db`` dB of the strongest
  frequency's. Audio upsampled from a lower rate has nothing above the old Nyquist frequency. A clip
  shorter than ``n_fft`` is one frame, Hann-windowed over its own length (:func:`effective_bandwidth`).
- ``snr_db``: WADA-SNR (Kim and Stern, Interspeech 2008), a blind estimate: clean speech
  amplitudes are taken as Gamma-distributed (shape 0.4) and the noise as Gaussian; the statistic
  log(mean|x|) - mean(log|x|) grows with the SNR, and the curve that maps it to an SNR is computed
  here from that model (:func:`wada_curve`). Clamped to [-20, 100] dB.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import special

from ..config import LevelDb
from .scorers import COLUMNS as SCORER_COLUMNS

COLUMNS = SCORER_COLUMNS["signal"]
LEVEL_FLOOR = 1e-8  # -160 dBFS

# WADA-SNR: shape of the Gamma distribution of clean speech amplitudes, and the SNR grid of the curve.
WADA_ALPHA = 0.4
WADA_SNR_DB = np.arange(-20.0, 101.0)
WADA_EPS = 1e-10  # |x| floor after peak normalisation, as in the reference implementation


class SignalOptions(BaseModel):
    """The ``signal`` section of a score config."""

    model_config = ConfigDict(extra="forbid")
    clip_level: float = Field(
        0.99, gt=0, le=1, description="|x| at or above this (full scale 1.0) counts as clipped: 0 < clip_level <= 1."
    )
    silence_threshold_db: LevelDb = Field(
        -60.0, description="Frames with an RMS level below this (dBFS, 0 or below) are silent."
    )
    frame_seconds: float = Field(0.02, gt=0, description="Frame length of the silence fraction.")
    bandwidth_db: float = Field(60.0, gt=0, description="Bandwidth: within this many dB of the strongest frequency.")
    n_fft: int = Field(1024, ge=16, description="Frame length of the long-term spectrum (bandwidth).")


class SignalScorer:
    """The ``signal`` scorer: :func:`signal_statistics` of each clip's real samples at the job's rate."""

    columns = COLUMNS

    def __init__(self, *, device: Any = None, forward_batch: int | None = None, **options: Any):
        self.options = SignalOptions(**options).model_dump()

    def __call__(self, clips) -> dict[str, np.ndarray]:
        rows = [
            signal_statistics(clips.waveform(i, clips.sample_rate), clips.sample_rate, **self.options)
            for i in range(len(clips))
        ]
        return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in COLUMNS}


def level_db(amplitude: float) -> float:
    return float(20.0 * np.log10(max(amplitude, LEVEL_FLOOR)))


def signal_statistics(
    x: np.ndarray,
    sample_rate: int,
    *,
    clip_level: float = 0.99,
    silence_threshold_db: float = -60.0,
    frame_seconds: float = 0.02,
    bandwidth_db: float = 60.0,
    n_fft: int = 1024,
) -> dict[str, float]:
    """Every statistic of :data:`COLUMNS` for one mono clip (float64 internally)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty mono clip, got shape {list(x.shape)}")
    magnitude = np.abs(x)
    square = x * x
    frame = max(1, int(round(frame_seconds * sample_rate)))
    frames = square[: len(x) // frame * frame].reshape(-1, frame) if len(x) >= frame else square[None]
    frame_level = 10.0 * np.log10(np.maximum(frames.mean(axis=1), LEVEL_FLOOR**2))
    dc = float(x.mean())
    return {
        "peak_dbfs": level_db(float(magnitude.max())),
        "rms_dbfs": level_db(float(np.sqrt(square.mean()))),
        "clipping_fraction": float((magnitude >= clip_level).mean()),
        "dc_offset": dc,
        "silence_fraction": float((frame_level < silence_threshold_db).mean()),
        "bandwidth_hz": effective_bandwidth(x - dc, sample_rate, bandwidth_db, n_fft),
        "snr_db": wada_snr(magnitude),
    }


def effective_bandwidth(x: np.ndarray, sample_rate: int, within_db: float = 60.0, n_fft: int = 1024) -> float:
    """Highest frequency (Hz) whose long-term power is within ``within_db`` of the strongest; 0 for silence.

    A clip shorter than ``n_fft`` is one frame: its samples under a Hann window of their own length,
    zero-padded to ``n_fft`` after the window. (An ``n_fft`` window over the clip and its padding cut
    the signal off where the window is still open: that edge leaks above any cut-off, and 800 samples
    of 4 kHz band-limited noise at 16 kHz read 8000 Hz.)
    """
    if len(x) < n_fft:
        frames = (x * np.hanning(len(x)))[None]
    else:
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[:: n_fft // 2] * np.hanning(n_fft)
    power = np.square(np.abs(np.fft.rfft(frames, n=n_fft, axis=1))).mean(axis=0)
    strongest = power.max()
    if strongest <= 0:
        return 0.0
    highest = np.flatnonzero(power >= strongest * 10.0 ** (-within_db / 10.0)).max()
    return float(highest * sample_rate / n_fft)


def wada_snr(magnitude: np.ndarray) -> float:
    """WADA-SNR in dB of a clip given its absolute sample values."""
    peak = magnitude.max()
    if peak <= 0:
        return float(WADA_SNR_DB[0])  # digital silence: no signal at all
    v = np.maximum(magnitude / peak, WADA_EPS)
    statistic = np.log(v.mean()) - np.log(v).mean()
    return float(np.interp(statistic, wada_curve(), WADA_SNR_DB))  # clamps to the grid's ends


@functools.cache
def wada_curve() -> np.ndarray:
    """G(SNR) = log E|z| - E log|z| for z = s + n on :data:`WADA_SNR_DB`, increasing.

    ``s`` is a Gamma(0.4, 1) amplitude with a random sign, ``n`` Gaussian with the variance that
    gives the SNR (E s² = 0.4·1.4). The expectation over the amplitude is a fixed Gauss-Legendre
    rule on geometric panels after substituting a = t^(1/0.4), which removes the density's
    singularity at 0; the Gaussian part is in closed form (:func:`_expected_log_abs`). Matches a
    Monte Carlo estimate to the latter's noise (tests); about 0.3 s, once per process.
    """
    alpha = WADA_ALPHA
    sigma = np.sqrt(alpha * (alpha + 1) / 10.0 ** (WADA_SNR_DB / 10.0))
    nodes, weights = np.polynomial.legendre.leggauss(20)
    edges = np.concatenate([[0.0], np.geomspace(1e-5, 8.0, 48)])
    low, high = edges[:-1, None], edges[1:, None]
    t = ((high - low) / 2 * nodes + (high + low) / 2).ravel()
    amplitude = t ** (1 / alpha)
    # a^(alpha-1) e^-a da / Gamma(alpha) = e^-a dt / Gamma(alpha + 1) under a = t^(1/alpha)
    weight = ((high - low) / 2 * weights).ravel() * np.exp(-amplitude) / special.gamma(alpha + 1)
    a, s = amplitude[:, None], sigma[None, :]
    folded_mean = s * np.sqrt(2 / np.pi) * np.exp(-(a**2) / (2 * s**2)) + a * special.erf(a / (s * np.sqrt(2)))
    return np.log(weight @ folded_mean) - weight @ _expected_log_abs(a, s)


def _expected_log_abs(mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E log|mean + sigma·e| for a standard normal e, elementwise.

    With x = mean² / (2 sigma²): log sigma + (log 2 + E ψ(K + 1/2)) / 2 for K ~ Poisson(x) (the
    derivative of the folded normal's moments at 0); for x >= 25 the expansion
    log mean - r²/2 - 3r⁴/4 - 5r⁶/2 - 105r⁸/8 with r² = 1/(2x) (error below 1e-7).
    """
    mean, sigma = np.broadcast_arrays(np.abs(mean), sigma)
    x = mean**2 / (2 * sigma**2)
    out = np.empty(x.shape)
    far = x >= 25
    r2 = 1 / (2 * x[far])
    out[far] = np.log(mean[far]) - r2 / 2 - 3 * r2**2 / 4 - 5 * r2**3 / 2 - 105 * r2**4 / 8
    near = x[~far]
    k = np.arange(120.0)[:, None]
    poisson = np.exp(k * np.log(np.maximum(near, 1e-300)) - near - special.gammaln(k + 1))
    out[~far] = np.log(sigma[~far]) + 0.5 * np.log(2) + 0.5 * (poisson * special.digamma(k + 0.5)).sum(axis=0)
    return out
