"""Batched augmentation functions with explicit per-sample parameters.

Waveform functions take ``x [B, T]``; spectral functions take STFT
power (or magnitude) spectrograms ``[B, F, N]`` (F = n_fft // 2 + 1 bins, N frames) before the mel
projection; masks take log-mel spectrograms ``[B, n_mels, N]``. Each
parameter is a ``[B]`` tensor, so one call augments a whole batch on the GPU
with a different draw per sample; a sample left alone gets the identity
value (0 dB, rate 1, 0 semitones, ...). Nothing here draws random numbers.

Why time stretch, pitch shift and filters act on magnitudes: the job's
output is a magnitude (mel) spectrogram. A phase vocoder stretch followed by
an STFT yields the time-interpolated magnitudes; a pitch shift (stretch then
resample) yields frequency-scaled magnitudes; a zero-phase filter multiplies
each frame by ``|H(f)|``. Doing it on the magnitudes gives those results
without the inverse/forward STFT round trips and without phase-vocoder
artifacts, at a small fraction of the cost (see docs/architecture.md).
"""

from __future__ import annotations

import torch

_EPS = 1e-10


# ---- waveform ------------------------------------------------------------------------


def gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """Scale each sample by ``gain_db`` decibels."""
    return x * torch.pow(10.0, gain_db / 20.0).to(x.dtype)[:, None]


def polarity(x: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Multiply each sample by +1 or -1."""
    return x * sign.to(x.dtype)[:, None]


def time_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Circularly shift each sample right by ``shift`` samples (negative: left)."""
    t = x.shape[-1]
    index = (torch.arange(t, device=x.device)[None, :] - shift.to(x.device).long()[:, None]) % t
    return torch.gather(x, 1, index)


def add_noise(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Add ``noise`` scaled so the signal-to-noise ratio is ``snr_db``.

    An all-zero signal (no power to be relative to) gets noise at ``snr_db`` below full scale instead; any
    other, however quiet, gets it relative to its own power (below 1e-10 it got the full-scale noise before
    2026-12-07: a short -80 dBFS clip padded to its crop became pure noise).
    """
    signal_power = x.pow(2).mean(dim=-1)
    signal_power = torch.where(signal_power > 0, signal_power, torch.ones_like(signal_power))
    noise_power = noise.pow(2).mean(dim=-1).clamp_min(_EPS)
    scale = torch.sqrt(signal_power / (noise_power * torch.pow(10.0, snr_db.to(x.dtype) / 10.0)))
    return x + noise * scale[:, None]


# ---- STFT magnitudes -------------------------------------------------------------------


def _interpolate(mag: torch.Tensor, position: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear interpolation of ``mag [B, F, N]`` along ``dim`` at fractional ``position``
    (``[B, F]`` for dim 1, ``[B, N]`` for dim 2); positions outside the axis read zero."""
    size = mag.shape[dim]
    padded = torch.nn.functional.pad(mag, (0, 1) if dim == 2 else (0, 0, 0, 1))  # a zero slice at the end
    valid = (position >= 0) & (position <= size - 1)
    position = torch.where(valid, position, torch.full_like(position, float(size)))
    index0 = position.floor().long().clamp(max=size)
    index1 = (index0 + 1).clamp(max=size)
    frac = (position - index0.to(position.dtype)).clamp(0, 1)
    if dim == 2:
        shape = (mag.shape[0], mag.shape[1], position.shape[-1])
        i0, i1, w = index0[:, None, :].expand(shape), index1[:, None, :].expand(shape), frac[:, None, :]
    else:
        shape = (mag.shape[0], position.shape[-1], mag.shape[2])
        i0, i1, w = index0[:, :, None].expand(shape), index1[:, :, None].expand(shape), frac[:, :, None]
    return (1 - w) * torch.gather(padded, dim, i0) + w * torch.gather(padded, dim, i1)


def time_stretch(mag: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Change tempo by ``rate`` (> 1 faster), keeping pitch and the frame count:
    output frame ``m`` reads input frame ``m * rate``; past the input is silence."""
    frames = torch.arange(mag.shape[2], device=mag.device, dtype=mag.dtype)
    return _interpolate(mag, frames[None, :] * rate.to(mag.device, mag.dtype)[:, None], dim=2)


def pitch_shift(mag: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Shift pitch by ``semitones`` keeping tempo: output bin ``k`` reads input bin
    ``k / 2^(semitones/12)``; bins that would come from above Nyquist are silent."""
    factor = torch.pow(2.0, semitones.to(mag.device, mag.dtype) / 12.0)
    bins = torch.arange(mag.shape[1], device=mag.device, dtype=mag.dtype)
    return _interpolate(mag, bins[None, :] / factor[:, None], dim=1)


def butterworth_response(freqs: torch.Tensor, cutoff: torch.Tensor, order: int, highpass: bool) -> torch.Tensor:
    """Magnitude response ``[B, F]`` of a Butterworth low/high-pass at ``cutoff`` Hz."""
    ratio = freqs[None, :] / cutoff[:, None].clamp_min(1e-3)
    if highpass:
        ratio = 1.0 / ratio.clamp_min(1e-6)
    return torch.rsqrt(1.0 + ratio.pow(2 * order))


def apply_response(power: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Zero-phase filtering of STFT power: scale bin ``f`` of every frame by ``|response|^2 [B, F]``."""
    return power * response.square()[:, :, None]


# ---- log-mel masks ---------------------------------------------------------------------


def mask_along_axis(
    spec: torch.Tensor, start: torch.Tensor, width: torch.Tensor, value: torch.Tensor, axis: int
) -> torch.Tensor:
    """SpecAugment mask: set ``[start, start + width)`` along ``axis`` (1: freq, 2: time) of
    ``[B, F, N]`` to ``value`` per sample (width 0: unchanged)."""
    size = spec.shape[axis]
    position = torch.arange(size, device=spec.device)
    start = start.to(spec.device)[:, None]
    mask = (position[None, :] >= start) & (position[None, :] < start + width.to(spec.device)[:, None])
    mask = mask[:, :, None] if axis == 1 else mask[:, None, :]
    return torch.where(mask, value.to(spec.device, spec.dtype)[:, None, None], spec)
