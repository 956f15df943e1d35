"""The one interface every audio encoder is used through.

``encode(audio [B, C, T]) -> [B, D, N]`` continuous latents, or integer tokens
for a discrete model (``[B, Q, N]``; ``[B, N, Q]`` and ``[B, N]`` are detected
and stored ``[Q, N]``, see ``loading.inspect_encoder``), with the attributes
the job needs to plan windows and masks: ``sample_rate``, ``channels`` and
``downsampling_ratio`` (audio samples per latent frame), and for tokens
``codebook_size`` (tokens lie in ``[0, codebook_size)``; it picks their dtype).

A VAE also offers ``posterior(audio) -> (mean, std)``; the stage then either
takes the mean (``encode``) or samples the posterior with noise drawn per
sample key, so the result never depends on batch composition or on the
global random state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import ModelLoadError  # noqa: F401  (re-exported: the encoders' load error)


class Encoder(nn.Module):
    """Base class: subclasses implement :meth:`encode` (and :meth:`posterior` for a VAE). A factory's subclass
    that does not set ``sample_rate``, ``channels`` or ``downsampling_ratio`` gets them from the job's config
    (``loading.load_encoder``), as a plain module does."""

    sample_rate: int
    channels: int
    downsampling_ratio: int
    is_discrete: bool = False
    codebook_size: int | None = None  # discrete models, when known

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` of a VAE's posterior, each ``[B, D, N]``; None for other models."""
        return None

    @property
    def has_posterior(self) -> bool:
        return type(self).posterior is not Encoder.posterior

    def forward_note(self) -> str:
        """What to add to an error about the model's output where it came from ``forward``, not ``encode``
        ("" here: a subclass's own encode is called; :class:`ModuleEncoder` says when it called forward)."""
        return ""

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "downsampling_ratio": self.downsampling_ratio,
            "is_discrete": self.is_discrete,
            "codebook_size": self.codebook_size,
        }


# Attribute names user modules commonly use for the input channel count.
CHANNEL_ATTRIBUTES = ("channels", "audio_channels", "io_channels", "in_channels")


class ModuleEncoder(Encoder):
    """Wraps any ``nn.Module`` or TorchScript module as an :class:`Encoder`.

    Calls ``module.encode(audio)`` when the module has it, else ``module(audio)`` (a TorchScript
    module has ``encode`` only when it was compiled: ``@torch.jit.export`` or called by ``forward``);
    a ``module.posterior(audio) -> (mean, std)`` is used for posterior sampling.
    The attributes come from the module when it declares them, else from the
    job's config (``sample_rate``, ``audio_channels``, ``model.downsampling_ratio``,
    and ``model.codebook_size`` in ``load_encoder``); a value given in both places must agree.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        downsampling_ratio: int | None = None,
        is_discrete: bool = False,
        name: str = "model",
    ):
        super().__init__()
        self.module = module
        self.sample_rate = _resolve(name, "sample_rate", _attr(module, ("sample_rate",)), sample_rate, "sample_rate")
        self.channels = _resolve(name, "channels", _attr(module, CHANNEL_ATTRIBUTES), channels, "audio_channels")
        self.downsampling_ratio = _resolve(
            name,
            "downsampling_ratio",
            _attr(module, ("downsampling_ratio",)),
            downsampling_ratio,
            "model.downsampling_ratio",
        )
        self.is_discrete = is_discrete
        self.codebook_size = _attr(module, ("codebook_size",)) if is_discrete else None
        # No ``encode``: the module is called. A TorchScript file keeps only the methods forward reaches
        # or @torch.jit.export names, so its Python encode may have been left out when it was scripted.
        self.calls_forward = not callable(getattr(module, "encode", None))
        self._module_has_posterior = callable(getattr(module, "posterior", None))

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.module(audio) if self.calls_forward else self.module.encode(audio)

    def forward_note(self) -> str:
        """What to add to an error about the model's output when it came from ``forward``, not ``encode``."""
        if not self.calls_forward:
            return ""
        if isinstance(self.module, torch.jit.ScriptModule):
            return (
                ". The TorchScript model has no encode method, so its forward was called: if encode is the "
                "method to call, mark it @torch.jit.export before torch.jit.script and save the model again"
            )
        return f". {type(self.module).__name__} has no encode method, so its forward was called"

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._module_has_posterior:
            return None
        mean, std = self.module.posterior(audio)
        return mean, std

    @property
    def has_posterior(self) -> bool:
        return self._module_has_posterior

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "module": type(self.module).__name__}


def _attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return int(value.item())
    return None


def _resolve(model: str, what: str, declared: int | None, configured: int | None, key: str) -> int:
    if declared is not None and configured is not None and declared != configured:
        raise ModelLoadError(
            f"{key}: the config says {configured} but {model} declares {what} = {declared}; "
            f"remove {key} from the config or fix it"
        )
    value = declared if declared is not None else configured
    if value is None:
        raise ModelLoadError(f"{key}: {model} does not declare {what}; set {key} in the config")
    return int(value)
