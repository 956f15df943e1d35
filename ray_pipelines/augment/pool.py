"""The augmentation pool: which augmentations a view gets, with what parameters.

A view draws ``num_waveform_augs`` distinct waveform augmentations and
``num_spectrogram_augs`` distinct spectrogram augmentations from the enabled
pools, plus their parameters, all from the view's own generator. Chosen
augmentations are applied in a fixed canonical order (gain, polarity, time
shift, noise on the waveform; time stretch, pitch shift, low/high/band-pass
on the STFT power; then frequency and time masks on the log-mel), so a view's result depends only on its own draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from . import functional as F


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GainAug(_Range):
    min_db: float = -6.0
    max_db: float = 6.0


class NoiseAug(_Range):
    min_snr_db: float = 10.0
    max_snr_db: float = 40.0


class TimeShiftAug(_Range):
    max_fraction: float = Field(0.25, ge=0, le=1, description="Largest circular shift, as a fraction of the clip.")


class PitchShiftAug(_Range):
    min_semitones: float = Field(-2.0, ge=-12)
    max_semitones: float = Field(2.0, le=12)


class TimeStretchAug(_Range):
    min_rate: float = Field(0.8, gt=0.25)
    max_rate: float = Field(1.25, lt=4.0)


class LowPassAug(_Range):
    min_cutoff_hz: float = Field(2000.0, gt=0)
    max_cutoff_hz: float = Field(8000.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class HighPassAug(_Range):
    min_cutoff_hz: float = Field(50.0, gt=0)
    max_cutoff_hz: float = Field(500.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class BandPassAug(_Range):
    min_center_hz: float = Field(500.0, gt=0)
    max_center_hz: float = Field(4000.0, gt=0)
    min_bandwidth_octaves: float = Field(1.0, gt=0)
    max_bandwidth_octaves: float = Field(3.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class PolarityAug(_Range):
    """Invert the sign of the waveform (no parameters)."""


class MaskAug(_Range):
    max_width: int = Field(..., ge=0, description="Widest mask, in bins (frequency) or frames (time).")


class WaveformPoolConfig(BaseModel):
    """Enabled waveform augmentations and their ranges; ``null`` removes one from the pool."""

    model_config = ConfigDict(extra="forbid")
    gain: GainAug | None = Field(default_factory=GainAug)
    noise: NoiseAug | None = Field(default_factory=NoiseAug)
    time_shift: TimeShiftAug | None = Field(default_factory=TimeShiftAug)
    pitch_shift: PitchShiftAug | None = Field(default_factory=PitchShiftAug)
    time_stretch: TimeStretchAug | None = Field(default_factory=TimeStretchAug)
    lowpass: LowPassAug | None = Field(default_factory=LowPassAug)
    highpass: HighPassAug | None = Field(default_factory=HighPassAug)
    bandpass: BandPassAug | None = Field(default_factory=BandPassAug)
    polarity: PolarityAug | None = Field(default_factory=PolarityAug)


class SpectrogramPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frequency_mask: MaskAug | None = Field(default_factory=lambda: MaskAug(max_width=24))
    time_mask: MaskAug | None = Field(default_factory=lambda: MaskAug(max_width=26))


# Application order; a view applies the ones it drew, in this order. The signal
# steps run on the waveform, the spectral ones on the STFT power that feeds
# the mel projection (see augment.functional for why).
SIGNAL_STEPS = ("gain", "polarity", "time_shift", "noise")
SPECTRAL_STEPS = ("time_stretch", "pitch_shift", "lowpass", "highpass", "bandpass")
WAVEFORM_ORDER = SIGNAL_STEPS + SPECTRAL_STEPS
SPECTROGRAM_ORDER = ("frequency_mask", "time_mask")


@dataclass
class ViewParams:
    """Everything random about one view, drawn up front."""

    waveform: tuple[str, ...]
    spectrogram: tuple[str, ...]
    gain_db: float = 0.0
    sign: float = 1.0
    shift: int = 0
    stretch_rate: float = 1.0
    semitones: float = 0.0
    lowpass_hz: float = 0.0
    highpass_hz: float = 0.0
    band_hz: tuple[float, float] = (0.0, 0.0)
    snr_db: float = 0.0
    noise_seed: int = 0
    masks: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, width)


def _validate_ranges(pool: BaseModel) -> None:
    for name in type(pool).model_fields:
        aug = getattr(pool, name)
        if aug is None:
            continue
        values = aug.model_dump()
        for low_key in [k for k in values if k.startswith("min_")]:
            high_key = "max_" + low_key[4:]
            if values[low_key] > values.get(high_key, values[low_key]):
                raise ValueError(f"{name}.{low_key} ({values[low_key]}) is larger than {name}.{high_key}")


class AugmentationPool:
    """Draws per-view parameters and applies them to batches of views."""

    def __init__(
        self,
        waveform: WaveformPoolConfig,
        spectrogram: SpectrogramPoolConfig,
        num_waveform_augs: int,
        num_spectrogram_augs: int,
        sample_rate: int,
        num_samples: int,
        n_mels: int,
        frames: int,
    ):
        _validate_ranges(waveform)
        _validate_ranges(spectrogram)
        self.waveform = waveform
        self.spectrogram = spectrogram
        self.waveform_names = [n for n in WAVEFORM_ORDER if getattr(waveform, n) is not None]
        self.spectrogram_names = [n for n in SPECTROGRAM_ORDER if getattr(spectrogram, n) is not None]
        if num_waveform_augs > len(self.waveform_names):
            raise ValueError(
                f"num_waveform_augs ({num_waveform_augs}) exceeds the {len(self.waveform_names)} "
                "enabled waveform augmentations"
            )
        if num_spectrogram_augs > len(self.spectrogram_names):
            raise ValueError(
                f"num_spectrogram_augs ({num_spectrogram_augs}) exceeds the "
                f"{len(self.spectrogram_names)} enabled spectrogram augmentations"
            )
        self.num_waveform_augs = num_waveform_augs
        self.num_spectrogram_augs = num_spectrogram_augs
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.n_mels = n_mels
        self.frames = frames

    # ---- drawing -----------------------------------------------------------------
    def draw(self, rng: np.random.Generator) -> ViewParams:
        """All of one view's random choices. Every parameter is drawn whether or not
        its augmentation was chosen, so the stream never depends on the choice."""
        wave_pick = rng.choice(len(self.waveform_names), size=self.num_waveform_augs, replace=False)
        spec_pick = rng.choice(len(self.spectrogram_names), size=self.num_spectrogram_augs, replace=False)
        w = self.waveform
        p = ViewParams(
            waveform=tuple(self.waveform_names[i] for i in sorted(wave_pick)),
            spectrogram=tuple(self.spectrogram_names[i] for i in sorted(spec_pick)),
        )
        u = rng.random(10)
        if w.gain:
            p.gain_db = w.gain.min_db + u[0] * (w.gain.max_db - w.gain.min_db)
        p.sign = -1.0
        if w.time_shift:
            max_shift = int(w.time_shift.max_fraction * self.num_samples)
            p.shift = int(round((2 * u[1] - 1) * max_shift))
        if w.time_stretch:
            lo, hi = np.log(w.time_stretch.min_rate), np.log(w.time_stretch.max_rate)
            p.stretch_rate = float(np.exp(lo + u[2] * (hi - lo)))
        if w.pitch_shift:
            p.semitones = w.pitch_shift.min_semitones + u[3] * (
                w.pitch_shift.max_semitones - w.pitch_shift.min_semitones
            )
        if w.lowpass:
            p.lowpass_hz = _log_uniform(u[4], w.lowpass.min_cutoff_hz, w.lowpass.max_cutoff_hz)
        if w.highpass:
            p.highpass_hz = _log_uniform(u[5], w.highpass.min_cutoff_hz, w.highpass.max_cutoff_hz)
        if w.bandpass:
            center = _log_uniform(u[6], w.bandpass.min_center_hz, w.bandpass.max_center_hz)
            octaves = w.bandpass.min_bandwidth_octaves + u[7] * (
                w.bandpass.max_bandwidth_octaves - w.bandpass.min_bandwidth_octaves
            )
            p.band_hz = (center / 2 ** (octaves / 2), center * 2 ** (octaves / 2))
        if w.noise:
            p.snr_db = w.noise.min_snr_db + u[8] * (w.noise.max_snr_db - w.noise.min_snr_db)
        p.noise_seed = int(rng.integers(0, 2**63 - 1))
        for name, size in (("frequency_mask", self.n_mels), ("time_mask", self.frames)):
            mask = getattr(self.spectrogram, name)
            max_width = min(mask.max_width, size) if mask else 0
            width = int(rng.integers(0, max_width + 1))
            start = int(rng.integers(0, size - width + 1))
            if name in p.spectrogram:
                p.masks[name] = (start, width)
        return p

    # ---- applying ------------------------------------------------------------------
    def _steps(self, names: tuple[str, ...], x: torch.Tensor, views: list[ViewParams], apply) -> torch.Tensor:
        """Run each step in ``names`` on the rows whose view chose it."""
        out = x
        for name in names:
            rows = [i for i, v in enumerate(views) if name in v.waveform]
            if len(rows) == len(views):  # every row chose it (always so for one view): no gather
                out = apply(name, out, views)
            elif rows:
                index = torch.tensor(rows, device=x.device)
                out = out.clone() if out is x else out
                out[index] = apply(name, out[index], [views[i] for i in rows])
        return out

    def apply_signal(self, audio: torch.Tensor, views: list[ViewParams]) -> torch.Tensor:
        """Gain, polarity, time shift and noise on ``audio [B, T]``."""
        return self._steps(SIGNAL_STEPS, audio, views, self._signal_step)

    def apply_spectral(self, power: torch.Tensor, views: list[ViewParams], freqs: torch.Tensor) -> torch.Tensor:
        """Time stretch, pitch shift and filters on STFT power ``[B, F, N]`` (bin centres ``freqs``)."""
        return self._steps(
            SPECTRAL_STEPS, power, views, lambda name, mag, chosen: self._spectral_step(name, mag, chosen, freqs)
        )

    @staticmethod
    def _param(views: list[ViewParams], attr: str, like: torch.Tensor, index: int | None = None) -> torch.Tensor:
        values = [getattr(v, attr) if index is None else getattr(v, attr)[index] for v in views]
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def _signal_step(self, name: str, x: torch.Tensor, views: list[ViewParams]) -> torch.Tensor:
        if name == "gain":
            return F.gain(x, self._param(views, "gain_db", x))
        if name == "polarity":
            return F.polarity(x, self._param(views, "sign", x))
        if name == "time_shift":
            return F.time_shift(x, self._param(views, "shift", x))
        if name == "noise":
            return F.add_noise(x, self._noise(views, x), self._param(views, "snr_db", x))
        raise KeyError(name)

    def _spectral_step(
        self, name: str, mag: torch.Tensor, views: list[ViewParams], freqs: torch.Tensor
    ) -> torch.Tensor:
        if name == "time_stretch":
            return F.time_stretch(mag, self._param(views, "stretch_rate", mag))
        if name == "pitch_shift":
            return F.pitch_shift(mag, self._param(views, "semitones", mag))
        order = getattr(self.waveform, name).order
        if name == "lowpass":
            response = F.butterworth_response(freqs, self._param(views, "lowpass_hz", mag), order, highpass=False)
        elif name == "highpass":
            response = F.butterworth_response(freqs, self._param(views, "highpass_hz", mag), order, highpass=True)
        elif name == "bandpass":
            response = F.butterworth_response(
                freqs, self._param(views, "band_hz", mag, 0), order, highpass=True
            ) * F.butterworth_response(freqs, self._param(views, "band_hz", mag, 1), order, highpass=False)
        else:
            raise KeyError(name)
        return F.apply_response(mag, response)

    def _noise(self, views: list[ViewParams], x: torch.Tensor) -> torch.Tensor:
        """White Gaussian noise, one independent stream per view (NumPy on CPU, torch on GPU)."""
        t = x.shape[-1]
        if x.device.type == "cpu":
            rows = [
                np.random.Generator(np.random.PCG64(v.noise_seed)).standard_normal(t, dtype=np.float32) for v in views
            ]
            return torch.from_numpy(np.stack(rows)).to(x.dtype)
        noise = torch.empty((len(views), t), device=x.device, dtype=x.dtype)
        for i, v in enumerate(views):
            generator = torch.Generator(device=x.device).manual_seed(v.noise_seed)
            noise[i] = torch.randn(t, generator=generator, device=x.device, dtype=x.dtype)
        return noise

    def apply_masks(self, spec: torch.Tensor, views: list[ViewParams]) -> torch.Tensor:
        """Each view's chosen masks on log-mel ``[B, n_mels, frames]``; masked cells take
        the mean of that view's spectrogram."""
        out = spec
        fill = spec.mean(dim=(-2, -1))
        for name, axis in (("frequency_mask", 1), ("time_mask", 2)):
            start = torch.tensor([v.masks.get(name, (0, 0))[0] for v in views])
            width = torch.tensor([v.masks.get(name, (0, 0))[1] for v in views])
            if width.numel() and int(width.max()) > 0:
                out = F.mask_along_axis(out, start, width, fill, axis)
        return out


def _log_uniform(u: float, low: float, high: float) -> float:
    return float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
