"""A small built-in convolutional VAE with seeded weights, for demos, tests and benchmarks.

Its weights are a pure function of its config (the seed included), so every
actor, machine and rerun builds the same model without shipping a file. It
is not trained: its latents carry no meaning, but they have the shapes,
dtypes and cost profile of a real audio VAE (strided 1-D convolutions, like
stable-audio-tools' Oobleck encoder, much smaller).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import Encoder
from .config import ReferenceModelConfig  # noqa: F401  (re-exported: the config is torch-free, in config)


def _down_block(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    # kernel 2s, stride s, padding ceil(s/2): T -> T / s exactly when s divides T. Nothing
    # runs at the full audio rate but the input convolution (that keeps the model cheap).
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        nn.ELU(),
        nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.ELU(),
    )


def _up_block(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose1d(
            in_channels,
            out_channels,
            kernel_size=2 * stride,
            stride=stride,
            padding=math.ceil(stride / 2),
            output_padding=stride % 2,
        ),
        nn.ELU(),
        nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.ELU(),
    )


class ReferenceAutoencoder(Encoder):
    """``[B, C, T]`` -> posterior ``[B, 2D, T / ratio]`` -> latents ``[B, D, T / ratio]`` (and back)."""

    def __init__(self, config: ReferenceModelConfig | None = None):
        super().__init__()
        self.config = config = config or ReferenceModelConfig()
        self.sample_rate = config.sample_rate
        self.channels = config.channels
        self.downsampling_ratio = config.downsampling_ratio
        self.latent_dim = config.latent_dim
        widths = [config.hidden * min(2**i, 4) for i in range(len(config.strides) + 1)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = nn.Sequential(
                nn.Conv1d(config.channels, widths[0], kernel_size=7, padding=3),
                *[_down_block(widths[i], widths[i + 1], s) for i, s in enumerate(config.strides)],
                nn.Conv1d(widths[-1], 2 * config.latent_dim, kernel_size=3, padding=1),
            )
            self.decoder = nn.Sequential(
                nn.Conv1d(config.latent_dim, widths[-1], kernel_size=3, padding=1),
                nn.ELU(),
                *[_up_block(widths[i + 1], widths[i], s) for i, s in reversed(list(enumerate(config.strides)))],
                nn.Conv1d(widths[0], config.channels, kernel_size=7, padding=3),
                nn.Tanh(),
            )
        self.eval().requires_grad_(False)

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, scale = self.encoder(audio).chunk(2, dim=1)
        return mean, F.softplus(scale) + 1e-4  # stable-audio-tools' VAE bottleneck convention

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """The posterior mean."""
        return self.posterior(audio)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def describe(self) -> dict:
        return {**super().describe(), "latent_dim": self.latent_dim, "builtin": self.config.model_dump()}
