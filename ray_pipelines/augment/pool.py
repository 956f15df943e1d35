"""The augmentation pool: which augmentations a view gets (drawn in ``params``, torch-free), and applying them.

A view draws ``num_waveform_augs`` distinct waveform augmentations and
``num_spectrogram_augs`` distinct spectrogram augmentations from the enabled
pools, plus their parameters, all from the view's own generator. Chosen
augmentations are applied in a fixed canonical order (gain, polarity, time
shift, noise on the waveform; time stretch, pitch shift, low/high/band-pass
on the STFT power; then frequency and time masks on the log-mel), so a view's result depends only on its own draws.
"""

from __future__ import annotations

import numpy as np
import torch

from . import functional as F
from .params import (  # noqa: F401  (re-exported: the pools' configs and draws live in params, torch-free)
    SIGNAL_STEPS,
    SPECTRAL_STEPS,
    SPECTROGRAM_ORDER,
    WAVEFORM_ORDER,
    AugmentationChoices,
    BandPassAug,
    GainAug,
    HighPassAug,
    LowPassAug,
    MaskAug,
    NoiseAug,
    PitchShiftAug,
    PolarityAug,
    SpectrogramPoolConfig,
    TimeShiftAug,
    TimeStretchAug,
    ViewParams,
    WaveformPoolConfig,
)


class AugmentationPool(AugmentationChoices):
    """Draws per-view parameters (:class:`~.params.AugmentationChoices`) and applies them to batches of views."""

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
