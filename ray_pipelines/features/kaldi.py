"""Kaldi filterbank features exactly as the AST feature extractor computes them.

``transformers.ASTFeatureExtractor`` calls ``torchaudio.compliance.kaldi.fbank``
on 16 kHz mono audio with: 128 mel bins, 25 ms frames every 10 ms, a Hann
("hanning") window, no dither, per-frame DC removal ("subtract the mean"),
pre-emphasis 0.97, power spectrum over a 512-point FFT, mel bins from 20 Hz to
Nyquist on the Kaldi mel scale, natural log floored at float32 epsilon. It then
zero-pads (or crops) the frames to ``max_length`` and normalises with the
AudioSet statistics as ``(x - mean) / (2 * std)``.

The functions here compute the same thing in plain PyTorch, batched over any
leading dimensions (``[..., T]`` audio -> ``[..., frames, n_mels]``), so a GPU
can take a whole batch at once; neither transformers nor torchaudio is needed
at run time. Parity with both is tested (tests/test_features_kaldi.py).

Kaldi's ``remove_dc_offset`` subtracts each frame's mean before pre-emphasis,
which also removes any constant offset of the whole waveform: subtracting the
waveform mean first (as the original AST training code did) changes nothing
beyond float rounding.
"""

from __future__ import annotations

import math

import torch

from ..spectrogram import FilterbankProjection, complex_power
from .frames import (  # noqa: F401  (re-exported: the constants and frame arithmetic are torch-free there)
    AST_MEAN,
    AST_SAMPLE_RATE,
    AST_STD,
    LOW_FREQ,
    PREEMPHASIS,
    frame_sizes,
    num_frames,
)

FLOAT32_EPSILON = torch.finfo(torch.float32).eps


def mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def kaldi_mel_banks(
    num_bins: int, fft_size: int, sample_rate: float, low_freq: float = LOW_FREQ, high_freq: float = 0.0
) -> torch.Tensor:
    """Triangular mel filters ``[num_bins, fft_size // 2 + 1]`` (Kaldi's, no VTLN warping).

    ``high_freq <= 0`` is an offset from Nyquist, as in Kaldi. The Nyquist FFT bin
    gets no weight (Kaldi builds ``fft_size // 2`` columns; the last is zero).
    """
    if num_bins <= 3:
        raise ValueError(f"Kaldi needs more than 3 mel bins, got {num_bins}")
    nyquist = 0.5 * sample_rate
    high_freq = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range: low {low_freq} Hz, high {high_freq} Hz, Nyquist {nyquist} Hz")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    mel = mel_scale((sample_rate / fft_size) * torch.arange(fft_size // 2)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def frames_of(waveform: torch.Tensor, size: int, shift: int) -> torch.Tensor:
    """``[..., T]`` -> ``[..., frames, size]`` whole frames (a view, no copy)."""
    if waveform.shape[-1] < size:
        return waveform.new_zeros((*waveform.shape[:-1], 0, size))
    return waveform.unfold(-1, size, shift)


def power_spectrum(
    frames: torch.Tensor, fft_size: int, window: torch.Tensor, preemphasis: float = PREEMPHASIS
) -> torch.Tensor:
    """Kaldi's per-frame processing: remove DC, pre-emphasise, window, |FFT|^2.

    Written into one zero-padded buffer in place (no intermediate frame copies), and the power
    taken as re² + im² (no square root, see ``complex_power``).
    """
    padded = frames.new_zeros((*frames.shape[:-1], fft_size))
    body = padded[..., : frames.shape[-1]]
    torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=body)
    if preemphasis:  # x[t] - p * x[t - 1], the first sample against itself
        first = body[..., :1] * (1.0 - preemphasis)
        body[..., 1:] -= preemphasis * body[..., :-1]  # the right side is computed before the update
        body[..., :1] = first
    body *= window
    return complex_power(torch.fft.rfft(padded))


def log_mel(power: torch.Tensor, banks: FilterbankProjection) -> torch.Tensor:
    """``[..., frames, F]`` power -> ``[..., frames, n_mels]`` natural-log mel energies."""
    return banks(power.transpose(-1, -2)).transpose(-1, -2).clamp_min(FLOAT32_EPSILON).log()


def pad_or_crop(features: torch.Tensor, max_length: int) -> torch.Tensor:
    """Exactly ``max_length`` frames: zero frames appended, or the tail cut (as the extractor does)."""
    n = features.shape[-2]
    if n > max_length:
        return features[..., :max_length, :]
    if n < max_length:
        return torch.nn.functional.pad(features, (0, 0, 0, max_length - n))
    return features


def normalize(features: torch.Tensor, mean: float = AST_MEAN, std: float = AST_STD) -> torch.Tensor:
    return (features - mean) / (std * 2)


class ASTFeatures(torch.nn.Module):
    """``[..., T]`` 16 kHz audio -> ``[..., max_length, n_mels]`` AST input values.

    ``forward(waveform, num_valid)`` takes the number of real samples when the
    tail of ``waveform`` is padding: features are then computed from the real
    samples only and padded with zero frames, exactly like calling the
    extractor on the unpadded audio.
    """

    def __init__(
        self,
        sample_rate: int = AST_SAMPLE_RATE,
        n_mels: int = 128,
        max_length: int = 1024,
        normalize: bool = True,
        mean: float = AST_MEAN,
        std: float = AST_STD,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
    ):
        super().__init__()
        self.sample_rate, self.n_mels, self.max_length = sample_rate, n_mels, max_length
        self.do_normalize, self.mean, self.std = normalize, mean, std
        self.size, self.shift, self.fft_size = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
        self.register_buffer("window", torch.hann_window(self.size, periodic=False), persistent=False)
        self.banks = FilterbankProjection(kaldi_mel_banks(n_mels, self.fft_size, float(sample_rate)))

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unpadded log-mel filterbank ``[..., frames, n_mels]``."""
        frames = frames_of(waveform, self.size, self.shift)
        if frames.shape[-2] == 0:  # shorter than one frame: no frames (some FFT backends reject empty input)
            return waveform.new_zeros((*waveform.shape[:-1], 0, self.n_mels))
        return log_mel(power_spectrum(frames, self.fft_size, self.window), self.banks)

    def forward(self, waveform: torch.Tensor, num_valid: int | None = None) -> torch.Tensor:
        if num_valid is not None and num_valid < waveform.shape[-1]:
            waveform = waveform[..., :num_valid]
        features = pad_or_crop(self.fbank(waveform), self.max_length)
        return normalize(features, self.mean, self.std) if self.do_normalize else features
