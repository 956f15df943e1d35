"""The augmentation pool: which augmentations a view gets (drawn in ``params``, torch-free), and applying them.

A view draws ``num_waveform_augs`` distinct waveform augmentations and
``num_spectrogram_augs`` distinct spectrogram augmentations from the enabled
pools, plus their parameters, all from the view's own generator. Chosen
augmentations are applied in a fixed canonical order (gain, polarity, time
shift, noise on the waveform; time stretch, pitch shift, low/high/band-pass
on the STFT power; then frequency and time masks on the log-mel), so a view's result depends only on its own draws
(and, for a clip shorter than its crop, on how much of the crop is audio: see ``spare_audio``).
"""

from __future__ import annotations

from dataclasses import replace

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
    ViewDraws,
    ViewParams,
    WaveformPoolConfig,
)


class AugmentationPool(AugmentationChoices):
    """Draws per-view parameters (:class:`~.params.AugmentationChoices`) and applies them to batches of views
    (:class:`~.params.ViewDraws`: one array per parameter, so a batch costs a few tensor copies, not a
    Python loop over its views)."""

    # ---- applying ------------------------------------------------------------------
    def _steps(self, names: tuple[str, ...], x: torch.Tensor, views: ViewDraws, apply) -> torch.Tensor:
        """Run each step in ``names`` on the rows whose view chose it."""
        out = x
        for name in names:
            chose = views.chose(name)
            if chose.all():  # every row chose it (always so for one view): no gather
                out = apply(name, out, views)
            elif chose.any():
                rows = np.flatnonzero(chose)
                index = torch.from_numpy(rows).to(x.device)
                out = out.clone() if out is x else out
                out[index] = apply(name, out[index], views.take(rows))
        return out

    def apply_signal(self, audio: torch.Tensor, views: ViewDraws) -> torch.Tensor:
        """Gain, polarity, time shift and noise on ``audio [B, T]``."""
        return self._steps(SIGNAL_STEPS, audio, views, self._signal_step)

    def apply_spectral(self, power: torch.Tensor, views: ViewDraws, freqs: torch.Tensor) -> torch.Tensor:
        """Time stretch, pitch shift and filters on STFT power ``[B, F, N]`` (bin centres ``freqs``)."""
        return self._steps(
            SPECTRAL_STEPS, power, views, lambda name, mag, chosen: self._spectral_step(name, mag, chosen, freqs)
        )

    @staticmethod
    def _param(views: ViewDraws, attr: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(getattr(views, attr), dtype=like.dtype).to(like.device)

    def _signal_step(self, name: str, x: torch.Tensor, views: ViewDraws) -> torch.Tensor:
        if name == "gain":
            return F.gain(x, self._param(views, "gain_db", x))
        if name == "polarity":
            return F.polarity(x, self._param(views, "sign", x))
        if name == "time_shift":
            return F.time_shift(x, self._param(views, "shift", x))
        if name == "noise":
            return F.add_noise(x, self._noise(views, x), self._param(views, "snr_db", x))
        raise KeyError(name)

    def _spectral_step(self, name: str, mag: torch.Tensor, views: ViewDraws, freqs: torch.Tensor) -> torch.Tensor:
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
                freqs, self._param(views, "band_low_hz", mag), order, highpass=True
            ) * F.butterworth_response(freqs, self._param(views, "band_high_hz", mag), order, highpass=False)
        else:
            raise KeyError(name)
        return F.apply_response(mag, response)

    def _noise(self, views: ViewDraws, x: torch.Tensor) -> torch.Tensor:
        """White Gaussian noise, one independent stream per view (NumPy on CPU, torch on GPU)."""
        t = x.shape[-1]
        seeds = views.noise_seed.tolist()
        if x.device.type == "cpu":
            rows = [np.random.Generator(np.random.PCG64(seed)).standard_normal(t, dtype=np.float32) for seed in seeds]
            return torch.from_numpy(np.stack(rows)).to(x.dtype)
        noise = torch.empty((len(seeds), t), device=x.device, dtype=x.dtype)
        generator = torch.Generator(device=x.device)
        for i, seed in enumerate(seeds):  # one launch per view, straight into its row
            torch.randn(t, generator=generator.manual_seed(seed), device=x.device, dtype=x.dtype, out=noise[i])
        return noise

    def spare_audio(self, views: ViewDraws, valid: np.ndarray, hop_length: int) -> ViewDraws:
        """``views`` where each crop holds ``valid`` samples of audio (the rest zero padding): a time mask that
        would cover every frame holding the clip's audio (a short clip fills a few of the frames) starts after
        the first of them instead (its onset, where a one-shot is loudest), keeping its end. No draw changes;
        every other view is left as it was."""
        starts, widths = views.time_mask_start.copy(), views.time_mask_width.copy()
        for i in np.flatnonzero((valid < self.num_samples) & (widths > 0)):
            shift = int(views.shift[i]) if views.chose("time_shift")[i] else 0
            rate = float(views.stretch_rate[i]) if views.chose("time_stretch")[i] else 1.0
            audio = np.flatnonzero(self._audio_frames(int(valid[i]), shift, rate, hop_length))
            end = starts[i] + widths[i]
            if len(audio) and starts[i] <= audio[0] and audio[-1] < end:
                starts[i], widths[i] = audio[0] + 1, end - audio[0] - 1
        return replace(views, time_mask_start=starts, time_mask_width=widths)

    def _audio_frames(self, valid: int, shift: int, rate: float, hop_length: int) -> np.ndarray:
        """Which frames of the spectrogram the masks see hold the crop's first ``valid`` samples: after the time
        shift (circular), the frames whose centre is nearest one of them; after the time stretch (output frame
        ``m`` reads input frame ``m * rate``, between two frames: both), those reading such a frame."""
        samples = (np.arange(valid) + shift) % self.num_samples
        shifted = np.zeros(self.frames, dtype=bool)
        shifted[np.minimum((samples + hop_length // 2) // hop_length, self.frames - 1)] = True
        position = np.arange(self.frames, dtype=np.float32) * np.float32(rate)  # as time_stretch computes it
        inside = position <= self.frames - 1  # past the input: silence
        reads = position[inside]
        stretched = np.zeros(self.frames, dtype=bool)
        stretched[inside] = shifted[np.floor(reads).astype(np.int64)] | shifted[np.ceil(reads).astype(np.int64)]
        return stretched

    def apply_masks(self, spec: torch.Tensor, views: ViewDraws) -> torch.Tensor:
        """Each view's chosen masks on log-mel ``[B, n_mels, frames]``; masked cells take
        the mean of that view's spectrogram."""
        out = spec
        fill = spec.mean(dim=(-2, -1))
        for name, axis in (("frequency_mask", 1), ("time_mask", 2)):
            width = getattr(views, f"{name}_width")
            if width.size and int(width.max()) > 0:
                start = torch.from_numpy(getattr(views, f"{name}_start"))
                out = F.mask_along_axis(out, start, torch.from_numpy(width), fill, axis)
        return out
