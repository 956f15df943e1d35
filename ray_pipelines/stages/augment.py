"""The augment stage: two independently augmented log-mel views per (clip, version)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..augment.pool import AugmentationPool, SpectrogramPoolConfig, WaveformPoolConfig
from ..seeding import sample_rng
from ..spectrogram import LogMelSpectrogram
from .device import pick_device


class AugmentStage:
    """``{"key", "version", "audio" [B, T], "error", ...}`` -> ``view1``, ``view2`` ``[B, 1, n_mels, frames]``.

    Each view's randomness comes from ``(seed, key, version, view)`` alone. On
    CUDA the whole batch is augmented at once; on CPU views are processed one
    at a time (the same speed there), which makes every view's bytes
    independent of how rows were grouped into batches.
    """

    def __init__(
        self,
        *,
        seed: int,
        sample_rate: int,
        duration: float,
        n_mels: int,
        n_fft: int,
        hop_length: int,
        f_min: float,
        f_max: float | None,
        top_db: float | None,
        num_waveform_augs: int,
        num_spectrogram_augs: int,
        waveform_pool: dict[str, Any],
        spectrogram_pool: dict[str, Any],
        dtype: str = "float32",
        device: str | None = None,
    ):
        self.seed = seed
        self.device = pick_device(device)
        self.num_samples = int(round(duration * sample_rate))
        self.mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, top_db).to(self.device)
        self.frames = self.mel.frames(self.num_samples)
        self.freqs = self.mel.frequencies()
        self.n_mels = n_mels
        self.pool = AugmentationPool(
            WaveformPoolConfig.model_validate(waveform_pool),
            SpectrogramPoolConfig.model_validate(spectrogram_pool),
            num_waveform_augs,
            num_spectrogram_augs,
            sample_rate,
            self.num_samples,
            n_mels,
            self.frames,
        )
        self.out_dtype = np.dtype(dtype)
        self.micro_batch = None if self.device.type == "cuda" else 1

    @property
    def view_shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)

    def augment(self, audio: torch.Tensor, keys: list[str], versions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of every row of ``audio [B, T]``; returns two ``[B, n_mels, frames]`` tensors."""
        views = [
            self.pool.draw(sample_rng(self.seed, key, int(version), view))
            for view in (1, 2)
            for key, version in zip(keys, versions)
        ]
        stacked = torch.cat([audio, audio], dim=0)
        step = self.micro_batch or len(views)
        specs = []
        with torch.inference_mode():
            for start in range(0, len(views), step):
                part = views[start : start + step]
                wave = self.pool.apply_signal(stacked[start : start + step], part)
                power = self.pool.apply_spectral(self.mel.power(wave), part, self.freqs)
                specs.append(self.pool.apply_masks(self.mel.from_power(power), part))
        spec = torch.cat(specs, dim=0)
        return spec[: len(keys)], spec[len(keys) :]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        n = len(audio)
        out_shape = (n, *self.view_shape)
        view1 = np.zeros(out_shape, dtype=self.out_dtype)
        view2 = np.zeros(out_shape, dtype=self.out_dtype)
        ok = np.flatnonzero(batch["error"] == "")
        if len(ok):
            tensor = torch.from_numpy(np.ascontiguousarray(audio[ok], dtype=np.float32)).to(self.device)
            keys = [str(k) for k in batch["key"][ok]]
            v1, v2 = self.augment(tensor, keys, batch["version"][ok].tolist())
            view1[ok, 0] = v1.float().cpu().numpy().astype(self.out_dtype)
            view2[ok, 0] = v2.float().cpu().numpy().astype(self.out_dtype)
        batch["view1"] = view1
        batch["view2"] = view2
        return batch
