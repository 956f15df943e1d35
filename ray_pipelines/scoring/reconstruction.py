"""The ``reconstruction`` scorer: a model's reconstruction loss and the signal energy of each log-mel.

``signal_energy`` = mean(mel²) and ``reconstruction_loss`` = MSE between the mel and the model's
reconstruction of it (``models.py``: the untrained reference MAE, a TorchScript archive, or
``module:factory`` + checkpoint). Audio rows become log-mels first (``spectrogram``:
LogMelSpectrogram arguments; the whole decoded window, zero padding included); ``normalize``
(``{"mean", "std"}``) standardises every mel before both scores. With ``mask_ratio > 0`` each
item's model input hides a random set of ``mask_patch`` patches drawn from ``(seed, key, item)``.

Rows go through the model in chunks of exactly ``forward_batch`` rows (the last one
zero-padded; 16 on CPU, 64 on CUDA by default): every forward has the same shape, so an item's
score is the same bytes whichever rows shared its batch (a matrix multiply's summation order
depends on the shapes, not on the other rows' values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..seeding import sample_rng
from ..spectrogram import LogMelSpectrogram
from .functional import random_patch_mask, reconstruction_mse, signal_energy
from .models import ModelSpec, build_model
from .scorers import COLUMNS as SCORER_COLUMNS


class ReconstructionScorer:
    columns = SCORER_COLUMNS["reconstruction"]

    def __init__(
        self,
        *,
        model: dict[str, Any],
        n_mels: int,
        frames: int,
        seed: int = 0,
        mask_ratio: float = 0.0,
        mask_patch: tuple[int, int] = (16, 16),
        spectrogram: dict[str, Any] | None = None,
        normalize: dict[str, float] | None = None,
        storage_options: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        forward_batch: int = 16,
    ):
        self.device = torch.device(device)
        self.model = build_model(ModelSpec.model_validate(model), self.device, storage_options)
        self.n_mels, self.frames = n_mels, frames
        self.forward_batch = forward_batch
        self.seed, self.mask_ratio, self.mask_patch = seed, mask_ratio, (int(mask_patch[0]), int(mask_patch[1]))
        self.spectrogram = LogMelSpectrogram(**spectrogram).to(self.device) if spectrogram else None
        self.normalize = normalize

    def masks(self, keys: list[str], items: list[int], rows: int) -> torch.Tensor:
        """``[rows, 1, n_mels, frames]`` bool: one seeded mask per (key, item), nothing hidden in padding rows."""
        masks = torch.zeros(rows, 1, self.n_mels, self.frames, dtype=torch.bool)
        for i, (key, item) in enumerate(zip(keys, items)):
            masks[i, 0] = random_patch_mask(
                self.n_mels,
                self.frames,
                self.mask_patch,
                self.mask_ratio,
                sample_rng(self.seed, key, int(item), "mask"),
            )
        return masks

    def to_mel(self, payload: torch.Tensor) -> torch.Tensor:
        """Input payload (mels, or audio when a spectrogram is configured) -> normalised ``[B, 1, n_mels, T]``."""
        mel = self.spectrogram(payload)[:, None] if self.spectrogram is not None else payload
        if self.normalize:
            mel = (mel - self.normalize["mean"]) / self.normalize["std"]
        return mel

    def score(self, payload: np.ndarray, keys: list[str], items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``n`` rows of ``payload`` (float64 ``[n]`` each)."""
        n, size = len(payload), self.forward_batch
        losses, energies = [], []
        with torch.inference_mode():
            for start in range(0, n, size):
                chunk = np.ascontiguousarray(payload[start : start + size], dtype=np.float32)
                real = len(chunk)
                if real < size:  # pad to the fixed forward shape
                    chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), np.float32)])
                mel = self.to_mel(torch.from_numpy(chunk).to(self.device))
                mask = None
                if self.mask_ratio > 0:
                    mask = self.masks(keys[start : start + real], items[start : start + real], size).to(self.device)
                reconstruction = self.model.reconstruct(mel, mask)
                losses.append(reconstruction_mse(mel, reconstruction)[:real].cpu().numpy())
                energies.append(signal_energy(mel)[:real].cpu().numpy())
        if not losses:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(losses), np.concatenate(energies)

    def __call__(self, clips) -> dict[str, np.ndarray]:
        payload = clips.audio if self.spectrogram is not None else clips.mel
        if payload is None:
            raise ValueError("the reconstruction scorer got no " + ("audio" if self.spectrogram else "spectrogram"))
        loss, energy = self.score(payload, clips.keys, clips.items)
        return {"reconstruction_loss": loss, "signal_energy": energy}
