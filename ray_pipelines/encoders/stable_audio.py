"""stable-audio-tools autoencoders: a model config JSON plus a checkpoint.

stable-audio-tools is an optional extra: it is imported only when a job
asks for this kind of model, and its absence is reported as a config error
that says what to install, not as a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..models import load_state_dict
from .base import Encoder, ModelLoadError

INSTALL_HINT = (
    "model.kind 'stable-audio-tools' needs the optional stable-audio-tools package, which is not "
    "installed in this environment (on the driver and every worker): "
    "pip install stable-audio-tools; or export the encoder as TorchScript and use model.kind torchscript"
)


def import_factory():
    """``stable_audio_tools.models.factory.create_model_from_config``, or a clear error."""
    try:
        from stable_audio_tools.models.factory import create_model_from_config
    except ImportError as e:
        missing = getattr(e, "name", "") or ""
        if missing and not missing.startswith("stable_audio_tools"):
            raise ModelLoadError(
                f"stable-audio-tools is installed but cannot be imported: it needs {missing!r} ({e})"
            ) from None
        raise ModelLoadError(INSTALL_HINT) from None
    return create_model_from_config


def parse_model_config(data: bytes, name: str) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except ValueError as e:
        raise ModelLoadError(f"model.path {name} is not a JSON model config: {e}") from None
    if config.get("model_type") != "autoencoder":
        raise ModelLoadError(
            f"model.path {name}: model_type is {config.get('model_type')!r}; pre-encoding needs an "
            "'autoencoder' model config"
        )
    if "sample_rate" not in config:
        raise ModelLoadError(f"model.path {name} has no sample_rate")
    return config


class StableAudioEncoder(Encoder):
    """Adapts stable-audio-tools' ``AudioAutoencoder`` to :class:`Encoder`.

    Discrete models return their bottleneck's tokens (``info[bottleneck.tokens_id]``,
    as pre_encode.py does). For a VAE bottleneck the posterior is read from the
    pre-bottleneck latents (mean, softplus(scale) + 1e-4), so the stage can take
    the mean or sample it with per-sample noise instead of the global RNG.
    """

    def __init__(self, model: nn.Module, model_config: dict[str, Any]):
        super().__init__()
        self.model = model
        self.model_config = model_config
        self.sample_rate = int(model_config["sample_rate"])
        self.channels = int(model_config.get("audio_channels", 2))
        self.downsampling_ratio = int(model.downsampling_ratio)
        self.is_discrete = bool(getattr(model, "is_discrete", False))
        size = getattr(getattr(model, "bottleneck", None), "codebook_size", None)  # its DiscreteBottleneck's
        self.codebook_size = int(size) if self.is_discrete and size is not None else None
        self.is_vae = type(getattr(model, "bottleneck", None)).__name__ == "VAEBottleneck"

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        if self.is_discrete:
            _, info = self.model.encode(audio, return_info=True)
            return info[self.model.bottleneck.tokens_id]
        if self.is_vae:
            return self.posterior(audio)[0]
        return self.model.encode(audio)

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.is_vae:
            return None
        mean, scale = self.model.encode(audio, skip_bottleneck=True).chunk(2, dim=1)
        return mean, F.softplus(scale) + 1e-4

    @property
    def has_posterior(self) -> bool:
        return self.is_vae

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "latent_dim": getattr(self.model, "latent_dim", None),
            "bottleneck": type(getattr(self.model, "bottleneck", None)).__name__,
            "model_config": self.model_config,
        }


# What a training checkpoint (stable-audio-tools' AutoencoderTrainingWrapper) holds the autoencoder
# under, beside its discriminator and losses: the EMA copy first, as the wrapper's export_model takes it.
TRAINING_PREFIXES = ("autoencoder_ema.ema_model.", "autoencoder.")


def autoencoder_state(state: dict[str, Any]) -> dict[str, Any]:
    """The autoencoder's own state dict: a training checkpoint's EMA copy (else its autoencoder), or an
    exported model's state dict as it is."""
    for prefix in TRAINING_PREFIXES:
        own = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if own:
            return own
    return state


def load_stable_audio(
    config_data: bytes, config_name: str, checkpoint: bytes, checkpoint_name: str
) -> StableAudioEncoder:
    create_model_from_config = import_factory()
    model_config = parse_model_config(config_data, config_name)
    model = create_model_from_config(model_config)
    state = autoencoder_state(load_state_dict(checkpoint, checkpoint_name))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(
            f"checkpoint {checkpoint_name} does not fit the model in {config_name}: {str(e).splitlines()[0]} ..."
        ) from None
    return StableAudioEncoder(model.eval().requires_grad_(False), model_config)
