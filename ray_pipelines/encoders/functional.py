"""Pure tensor functions around encoders: posterior sampling with per-sample noise."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..seeding import derive_seed


def posterior_noise(seed: int, keys: Sequence[str], windows: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``[B, *shape]`` (float32, CPU), one generator per (seed, key, window).

    Drawn on the CPU so the bytes do not depend on the device, the batch, or
    the global random state.
    """
    out = torch.empty((len(keys), *shape), dtype=torch.float32)
    for i, (key, window) in enumerate(zip(keys, windows)):
        generator = torch.Generator().manual_seed(derive_seed(seed, "posterior", key, int(window)) % 2**63)
        out[i] = torch.randn(shape, generator=generator, dtype=torch.float32)
    return out


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``mean + std * noise``, computed in float32."""
    return mean.float() + std.float() * noise.to(mean.device, torch.float32)
