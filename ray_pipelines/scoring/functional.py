"""Pure tensor functions behind the scores: no state, no device choice, no Ray.

Scores reduce over every axis but the first (the batch axis) and are computed
in float64, so a score does not depend on the input's dtype rounding of the sum.
"""

from __future__ import annotations

import numpy as np
import torch


def signal_energy(mel: torch.Tensor) -> torch.Tensor:
    """Mean of the squared spectrogram per item: ``[B, ...] -> [B]`` (float64)."""
    return mel.to(torch.float64).square().flatten(1).mean(dim=1)


def reconstruction_mse(mel: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error between input and reconstruction per item: ``[B, ...] -> [B]`` (float64)."""
    if mel.shape != reconstruction.shape:
        raise ValueError(f"reconstruction shape {list(reconstruction.shape)} differs from input {list(mel.shape)}")
    return (reconstruction.to(torch.float64) - mel.to(torch.float64)).square().flatten(1).mean(dim=1)


def patch_grid(n_mels: int, frames: int, patch: tuple[int, int]) -> tuple[int, int]:
    """Patches along (mel, time); a partial patch at the edge counts as one."""
    return -(-n_mels // patch[0]), -(-frames // patch[1])


def random_patch_mask(
    n_mels: int, frames: int, patch: tuple[int, int], ratio: float, rng: np.random.Generator
) -> torch.Tensor:
    """A ``[n_mels, frames]`` bool mask (True = hidden) covering a random ``ratio`` of patches.

    As in MAE, ``L - int(L * (1 - ratio))`` of the ``L`` patches are hidden,
    chosen by ``rng`` alone, so an item's mask never depends on its batch.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    rows, cols = patch_grid(n_mels, frames, patch)
    total = rows * cols
    hidden = total - int(total * (1.0 - ratio))
    grid = np.zeros(total, dtype=bool)
    grid[rng.permutation(total)[:hidden]] = True
    mask = torch.from_numpy(grid.reshape(rows, cols))
    mask = mask.repeat_interleave(patch[0], dim=0).repeat_interleave(patch[1], dim=1)
    return mask[:n_mels, :frames].contiguous()
