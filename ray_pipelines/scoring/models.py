"""Reconstruction models behind one interface.

Every model the score job uses is a :class:`Reconstructor`::

    reconstruct(mel [B, 1, n_mels, T], mask [B, 1, n_mels, T] bool | None) -> [B, 1, n_mels, T]

``mask`` (True = hidden) is given when the job's ``mask_ratio`` is above 0,
for masked autoencoders; the job draws it per item from (seed, key, item),
so a score never depends on the batch an item landed in.

Three kinds (``ModelSpec.kind``):

- ``reference``: :class:`ReferenceMAE`, a small masked autoencoder whose
  weights come from a seed. It is untrained: it is there for the demo, the
  tests and the benchmark; plug in your trained model for real scores.
- ``torchscript``: a ``torch.jit.save`` archive.
- ``factory``: ``package.module:function`` returning an ``nn.Module``, plus an
  optional checkpoint (a state dict) read with ``torch.load(weights_only=True)``.

A user module is called as ``module.reconstruct(mel, mask)`` when it has a
``reconstruct`` method (``reconstruct(mel)`` without a mask), else as
``module(mel)`` with hidden positions zeroed.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from ..models import (
    build_from_factory,
    bytes_sha256,
    factory_code_sha256,
    load_state_dict,
    load_torchscript,
    model_classes,
    read_model_file,
    weights_sha256,
)
from .options import ModelSpec


class Reconstructor(Protocol):
    def reconstruct(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...


class ReferenceMAE(nn.Module):
    """A small SimMIM-style masked autoencoder with seeded weights.

    Patchify ``[B, 1, n_mels, T]`` into ``patch``-sized tokens, replace hidden
    patches by a learned mask token, add fixed 2-D sinusoidal positions, run
    a pre-norm transformer encoder, project each token back to its patch.
    Inputs whose size is not a multiple of the patch are zero-padded and the
    output cropped back. Weights depend only on ``seed`` (the global RNG is
    left untouched).
    """

    def __init__(self, patch: tuple[int, int] = (16, 16), dim: int = 64, depth: int = 2, heads: int = 4, seed: int = 0):
        super().__init__()
        self.patch = (int(patch[0]), int(patch[1]))
        self.dim = dim
        area = self.patch[0] * self.patch[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Linear(area, dim)
            self.mask_token = nn.Parameter(0.02 * torch.randn(dim))
            layer = nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, area)
        self._positions: dict[tuple[int, int, str], torch.Tensor] = {}

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / self.patch[0]), math.ceil(width / self.patch[1])

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` -> ``[B, rows * cols, ph * pw]`` (zero-padded to whole patches)."""
        b, _, h, w = x.shape
        rows, cols = self._grid(h, w)
        ph, pw = self.patch
        x = nn.functional.pad(x, (0, cols * pw - w, 0, rows * ph - h))
        x = x.reshape(b, rows, ph, cols, pw).permute(0, 1, 3, 2, 4)
        return x.reshape(b, rows * cols, ph * pw)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b = tokens.shape[0]
        rows, cols = self._grid(height, width)
        ph, pw = self.patch
        x = tokens.reshape(b, rows, cols, ph, pw).permute(0, 1, 3, 2, 4)
        return x.reshape(b, 1, rows * ph, cols * pw)[:, :, :height, :width]

    def positions(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """Fixed 2-D sinusoidal embeddings ``[rows * cols, dim]``: half the channels per axis."""
        cache_key = (rows, cols, str(device))
        if cache_key not in self._positions:
            quarter = self.dim // 4
            freqs = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))

            def axis(n: int) -> torch.Tensor:
                angles = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None, :]
                return torch.cat([angles.sin(), angles.cos()], dim=1)

            r, c = axis(rows), axis(cols)
            grid = torch.cat([r[:, None, :].expand(rows, cols, -1), c[None, :, :].expand(rows, cols, -1)], dim=-1)
            table = grid.reshape(rows * cols, -1)
            if table.shape[1] < self.dim:  # dim not a multiple of 4: pad the last channels
                table = nn.functional.pad(table, (0, self.dim - table.shape[1]))
            self._positions[cache_key] = table.to(device)
        return self._positions[cache_key]

    def reconstruct(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _, _, height, width = mel.shape
        tokens = self.embed(self.patchify(mel))
        if mask is not None:
            hidden = self.patchify(mask.to(mel.dtype)).amax(dim=-1) > 0  # a patch is hidden if any bin is
            tokens = torch.where(hidden[..., None], self.mask_token.to(tokens.dtype), tokens)
        rows, cols = self._grid(height, width)
        tokens = tokens + self.positions(rows, cols, tokens.device).to(tokens.dtype)
        out = self.head(self.norm(self.encoder(tokens)))
        return self.unpatchify(out, height, width)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.reconstruct(mel, mask)


class ModuleReconstructor(nn.Module):
    """Adapts a user module (eager or TorchScript) to :class:`Reconstructor`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.has_reconstruct = hasattr(module, "reconstruct")

    def reconstruct(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.has_reconstruct:
            return self.module.reconstruct(mel, mask) if mask is not None else self.module.reconstruct(mel)
        return self.module(mel if mask is None else mel.masked_fill(mask, 0.0))

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.reconstruct(mel, mask)


def reference_mae(
    patch: tuple[int, int] = (16, 16), dim: int = 64, depth: int = 2, heads: int = 4, seed: int = 0
) -> ReferenceMAE:
    """A ``module:factory`` entry point for the reference model (``ray_pipelines.scoring.models:reference_mae``)."""
    return ReferenceMAE(tuple(patch), dim, depth, heads, seed)


def build_model(
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    storage_options: dict[str, Any] | None = None,
    torchscript: bytes | None = None,
) -> nn.Module:
    """The model ``spec`` names, in eval mode on ``device``, with a ``reconstruct`` method (``torchscript``:
    the TorchScript file's bytes, where the caller has read them already)."""
    if spec.kind == "reference":
        model: nn.Module = ReferenceMAE(spec.patch, spec.dim, spec.depth, spec.heads, spec.seed)
    elif spec.kind == "torchscript":
        data = torchscript if torchscript is not None else read_model_file(spec.path, storage_options, "model.path")
        model = ModuleReconstructor(load_torchscript(data, spec.path))
    else:
        state = (
            load_state_dict(read_model_file(spec.checkpoint, storage_options, "model.checkpoint"), spec.checkpoint)
            if spec.checkpoint
            else None
        )
        model = ModuleReconstructor(build_from_factory(spec.factory, spec.kwargs, state, spec.checkpoint or ""))
    return model.to(device).eval()


def check_model(model: nn.Module, n_mels: int, frames: int, masked: bool) -> None:
    """Fail early, naming the shapes, when the model does not map ``[B, 1, n_mels, T]`` to itself."""
    mel = torch.zeros(2, 1, n_mels, frames)
    mask = torch.zeros(2, 1, n_mels, frames, dtype=torch.bool) if masked else None
    device = next(iter(model.parameters()), torch.zeros(0)).device
    with torch.inference_mode():
        out = model.reconstruct(mel.to(device), None if mask is None else mask.to(device))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(mel.shape):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model maps [B, 1, {n_mels}, {frames}] to {got}; reconstruct must return the input's shape"
        )


def model_digests(
    model: dict[str, Any], n_mels: int, frames: int, masked: bool, storage_options: dict[str, Any] | None = None
) -> dict[str, str]:
    """Build the model ``model`` (a :class:`ModelSpec`'s dict) describes on the CPU, check it maps the mel
    shape to itself, and hash its weights and its code (a TorchScript file's bytes, which hold both; a
    factory's files, :func:`~ray_pipelines.model_files.factory_code_sha256`): the score job's fingerprint,
    computed in a child process (``ray_pipelines.isolated``) so the driver never imports torch."""
    spec = ModelSpec.model_validate(model)
    data = read_model_file(spec.path, storage_options, "model.path") if spec.kind == "torchscript" else None
    built = build_model(spec, "cpu", storage_options, torchscript=data)
    check_model(built, n_mels, frames, masked=masked)
    if data is not None:
        code = bytes_sha256(data)
    elif spec.kind == "factory":
        code = factory_code_sha256(spec.factory, model_classes(built))
    else:
        code = ""  # the reference model: this project's code (its version is in the manifest)
    return {"weights": weights_sha256(built), "code": code}
