"""Checks of a log-mel spectrogram's settings, made when the config is read (NumPy only: the driver
imports no torch).

``spectrogram.LogMelSpectrogram`` takes torchaudio's slaney mel filter bank. Where a band's triangle
holds no STFT bin (more mel bands than ``n_fft`` resolves between ``f_min`` and ``f_max``),
torchaudio only warns, in the actors' logs no one reads, and that row of every spectrogram is the
floor value; where ``f_min`` is not below ``f_max`` every row is. Both are refused up front instead.
"""

from __future__ import annotations

import numpy as np

# The slaney mel scale (torchaudio's and librosa's ``mel_scale="slaney"``): linear below 1 kHz, log above.
LINEAR_HZ_PER_MEL = 200.0 / 3.0
LOG_START_HZ = 1000.0
LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = LOG_START_HZ / LINEAR_HZ_PER_MEL + np.log(np.maximum(hz, LOG_START_HZ) / LOG_START_HZ) / LOG_STEP
    return np.where(hz >= LOG_START_HZ, log_part, hz / LINEAR_HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    start = LOG_START_HZ / LINEAR_HZ_PER_MEL
    return np.where(mel >= start, LOG_START_HZ * np.exp(LOG_STEP * (mel - start)), mel * LINEAR_HZ_PER_MEL)


def empty_bands(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> int:
    """How many of the ``n_mels`` triangles hold no STFT bin strictly inside them (a zero filter), on
    torchaudio's ``melscale_fbanks`` grid: bins ``linspace(0, sample_rate // 2, n_fft // 2 + 1)``."""
    bins = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    low, high = edges[:-2], edges[2:]
    # bins strictly inside (low, high): those below high minus those at or below low
    inside = np.searchsorted(bins, high, side="left") - np.searchsorted(bins, low, side="right")
    return int((inside <= 0).sum())


def mel_problem(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> str | None:
    """What makes these settings give rows without signal, as a config error's message; None if nothing."""
    nyquist = sample_rate / 2
    if f_max is not None and f_max > nyquist:
        return f"f_max ({f_max}) is above Nyquist ({nyquist})"
    top = nyquist if f_max is None else f_max
    if f_min >= top:
        return f"f_min ({f_min}) must be below f_max ({top}{', Nyquist' if f_max is None else ''})"
    empty = empty_bands(sample_rate, n_fft, n_mels, f_min, top)
    if not empty:
        return None
    fewer = next((n for n in range(n_mels - 1, 0, -1) if not empty_bands(sample_rate, n_fft, n, f_min, top)), 0)
    return (
        f"n_mels ({n_mels}) is more mel bands than n_fft {n_fft} resolves at {sample_rate} Hz from {f_min:g} to "
        f"{top:g} Hz: {empty} of them would hold no frequency bin (rows of the floor value in every spectrogram); "
        f"use n_mels {fewer} or fewer, or a larger n_fft"
    )
