"""The score stage: reconstruction loss and signal energy per item, batched, on the GPU when present."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..scoring.functional import random_patch_mask, reconstruction_mse, signal_energy
from ..scoring.models import ModelSpec, build_model
from ..seeding import sample_rng
from ..spectrogram import LogMelSpectrogram
from .device import pick_device

# Columns handed on to the sink; the spectrogram itself is dropped here, it is not written.
PASS_COLUMNS = ("key", "item", "samples_per_input", "split", "error", "etag", "source", "class", "group")


class ScoreStage:
    """``{"mel" [B, 1, n_mels, T] | "audio" [B, samples], "error", ...}`` -> ``reconstruction_loss``, ``signal_energy``.

    Audio rows become log-mels first (``spectrogram``: LogMelSpectrogram
    arguments). ``normalize`` (``{"mean", "std"}``) standardises every mel
    before both scores. With ``mask_ratio > 0`` each item's model input hides
    a random set of ``mask_patch`` patches drawn from ``(seed, key, item)``.

    Rows go through the model in chunks of exactly ``batch_size`` (the last
    one zero-padded): every forward has the same shape, so an item's score is
    the same bytes whichever rows shared its batch (a matrix multiply's
    summation order depends on the shapes, not on the other rows' values).
    """

    def __init__(self, *, model: dict[str, Any], n_mels: int, frames: int, batch_size: int, seed: int = 0,
                 mask_ratio: float = 0.0, mask_patch: tuple[int, int] = (16, 16),
                 spectrogram: dict[str, Any] | None = None, normalize: dict[str, float] | None = None,
                 storage_options: dict[str, Any] | None = None, device: str | None = None):
        self.device = pick_device(device)
        self.model = build_model(ModelSpec.model_validate(model), self.device, storage_options)
        self.n_mels, self.frames, self.batch_size = n_mels, frames, batch_size
        self.seed, self.mask_ratio, self.mask_patch = seed, mask_ratio, (int(mask_patch[0]), int(mask_patch[1]))
        self.spectrogram = LogMelSpectrogram(**spectrogram).to(self.device) if spectrogram else None
        self.normalize = normalize

    def masks(self, keys: list[str], items: list[int]) -> torch.Tensor:
        """``[B, 1, n_mels, frames]`` bool, one seeded mask per (key, item)."""
        return torch.stack([random_patch_mask(self.n_mels, self.frames, self.mask_patch, self.mask_ratio,
                                              sample_rng(self.seed, key, int(item), "mask"))
                            for key, item in zip(keys, items)])[:, None]

    def to_mel(self, payload: torch.Tensor) -> torch.Tensor:
        """Input payload (mels, or audio when a spectrogram is configured) -> normalised ``[B, 1, n_mels, T]``."""
        mel = self.spectrogram(payload)[:, None] if self.spectrogram is not None else payload
        if self.normalize:
            mel = (mel - self.normalize["mean"]) / self.normalize["std"]
        return mel

    def score(self, payload: np.ndarray, keys: list[str], items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``n`` rows of ``payload`` (float64 ``[n]`` each)."""
        n, size = len(payload), self.batch_size
        losses, energies = [], []
        with torch.inference_mode():
            for start in range(0, n, size):
                chunk = np.ascontiguousarray(payload[start:start + size], dtype=np.float32)
                real = len(chunk)
                if real < size:   # pad to the fixed forward shape
                    chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), np.float32)])
                mel = self.to_mel(torch.from_numpy(chunk).to(self.device))
                mask = None
                if self.mask_ratio > 0:
                    pad = [""] * (size - real)
                    mask = self.masks(keys[start:start + real] + pad, items[start:start + real] + [0] * len(pad))
                    mask = mask.to(self.device)
                reconstruction = self.model.reconstruct(mel, mask)
                losses.append(reconstruction_mse(mel, reconstruction)[:real].cpu().numpy())
                energies.append(signal_energy(mel)[:real].cpu().numpy())
        if not losses:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(losses), np.concatenate(energies)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payload = batch["audio"] if self.spectrogram is not None else batch["mel"]
        n = len(batch["key"])
        loss = np.full(n, np.nan)
        energy = np.full(n, np.nan)
        ok = np.flatnonzero(batch["error"] == "")
        if len(ok):
            keys = [str(k) for k in batch["key"][ok]]
            loss[ok], energy[ok] = self.score(payload[ok], keys, batch["item"][ok].astype(int).tolist())
        out = {name: batch[name] for name in PASS_COLUMNS if name in batch}
        out["reconstruction_loss"] = loss
        out["signal_energy"] = energy
        return out
