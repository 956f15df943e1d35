"""A-weighted loudness in dB per frame, batched in torch.

The same measure as ``torchcrepe.loudness.a_weighted`` (and DDSP's): the
STFT magnitude in dB (floored at 1e-5, and at ``top_db`` below the clip's
loudest bin), plus the A-weighting curve, minus a 20 dB reference, floored at
-100 dB, averaged over frequency. Computed on the device for a whole batch;
``top_db`` is applied per clip, so a clip's values never depend on the others
in its batch.
"""

from __future__ import annotations

import math

import torch

from .base import Teacher
from .spec import (  # noqa: F401  (re-exported: the spec and the version are torch-free, in spec)
    LOUDNESS_OUTPUTS,
    LOUDNESS_VERSION,
    LoudnessSpec,
    exact_hop_samples,
)

OUTPUTS = LOUDNESS_OUTPUTS

REF_DB = 20.0
MIN_DB = -100.0
AMIN = 1e-5


def a_weighting_db(frequencies: torch.Tensor, min_db: float = -80.0) -> torch.Tensor:
    """IEC 61672 A-weighting in dB at ``frequencies`` (Hz), floored at ``min_db`` (as librosa)."""
    f_sq = frequencies.double() ** 2
    c = torch.tensor([12194.217, 20.598997, 107.65265, 737.86223], dtype=torch.float64) ** 2
    weights = 2.0 + 20.0 * (
        math.log10(c[0])
        + 2 * torch.log10(f_sq)
        - torch.log10(f_sq + c[0])
        - torch.log10(f_sq + c[1])
        - 0.5 * torch.log10(f_sq + c[2])
        - 0.5 * torch.log10(f_sq + c[3])
    )
    return weights.clamp_min(min_db).to(frequencies.dtype)


def frame_starts(samples: int, hop: float) -> torch.Tensor:
    """Where frames every ``hop`` samples (a fraction of one too) start in ``samples`` samples, as many as fit:
    frame i at ``i * hop`` rounded to the nearest sample, so it never drifts from the time it stands for."""
    count = 1 + math.floor(samples / hop + 1e-9)
    return torch.floor(torch.arange(count, dtype=torch.float64) * hop + 0.5).long()


def a_weighted_loudness(
    audio: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int | float = 160,
    top_db: float | None = 80.0,
    window: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T]`` -> ``[B, 1 + T // hop_length]`` A-weighted loudness in dB (``hop_length`` a float: frames at
    :func:`frame_starts`, ``1 + floor(T / hop_length)`` of them)."""
    if window is None:
        window = torch.hann_window(n_fft, device=audio.device)
    if weights is None:
        freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=audio.device)
        weights = a_weighting_db(freqs) - REF_DB
    padded = torch.nn.functional.pad(audio, (n_fft // 2, n_fft // 2))  # librosa: center, zero padding
    if isinstance(hop_length, float):  # torch.stft takes whole hops: the same transform, frame by frame
        starts = frame_starts(padded.shape[-1] - n_fft, hop_length).to(audio.device)
        frames = padded[..., starts[:, None] + torch.arange(n_fft, device=audio.device)]  # [B, N, n_fft]
        spec = torch.fft.rfft(frames * window, dim=-1).transpose(-1, -2)
    else:
        spec = torch.stft(padded, n_fft, hop_length, window=window, center=False, return_complex=True)
    db = 20.0 * torch.log10(spec.abs().clamp_min(AMIN))  # [B, F, N]
    if top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    weighted = (db + weights[:, None]).clamp_min(MIN_DB)
    return weighted.mean(dim=-2)


class LoudnessTeacher(Teacher):
    kind = "loudness"
    outputs = OUTPUTS
    version = LOUDNESS_VERSION

    def __init__(
        self,
        name: str = "loudness",
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_ms: float = 10.0,
        top_db: float | None = 80.0,
    ):
        super().__init__(name)
        self.sample_rate = sample_rate
        self.n_fft, self.top_db = n_fft, top_db
        self.hop_length = exact_hop_samples(hop_ms, sample_rate)  # 220.5 for 10 ms at 22.05 kHz
        self._build(torch.device("cpu"))

    def _build(self, device: torch.device) -> None:
        self.window = torch.hann_window(self.n_fft, device=device)
        freqs = torch.linspace(0, self.sample_rate / 2, self.n_fft // 2 + 1, device=device)
        self.weights = a_weighting_db(freqs) - REF_DB

    def to(self, device: torch.device | str) -> LoudnessTeacher:
        super().to(device)
        self._build(self.device)
        return self

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        # STFT and logs in float32 even under autocast: dB of tiny magnitudes needs the range.
        with torch.autocast(self.device.type, enabled=False):
            db = a_weighted_loudness(
                audio.float(), self.sample_rate, self.n_fft, self.hop_length, self.top_db, self.window, self.weights
            )
        return {"db": db}
