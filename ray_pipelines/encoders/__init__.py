"""Audio encoders behind one interface, for the encode job.

``encode(audio [B, C, T]) -> [B, D, N]`` latents or ``[B, Q, N]`` tokens, with
``sample_rate``, ``channels`` and ``downsampling_ratio``. Kinds: the built-in
reference VAE, a TorchScript file, ``module:factory`` + checkpoint, and
stable-audio-tools model configs (optional package, imported lazily).
"""

from .base import Encoder, ModelLoadError, ModuleEncoder
from .config import ModelConfig
from .functional import posterior_noise, sample_posterior
from .loading import LoadedEncoder, ModelInfo, inspect_encoder, load_encoder
from .reference import ReferenceAutoencoder, ReferenceModelConfig

__all__ = ["Encoder", "LoadedEncoder", "ModelConfig", "ModelInfo", "ModelLoadError", "ModuleEncoder",
           "ReferenceAutoencoder", "ReferenceModelConfig", "inspect_encoder", "load_encoder", "posterior_noise",
           "sample_posterior"]
