"""Audio encoders behind one interface, for the encode job.

``encode(audio [B, C, T]) -> [B, D, N]`` latents or ``[B, Q, N]`` tokens, with
``sample_rate``, ``channels`` and ``downsampling_ratio``. Kinds: the built-in
reference VAE, a TorchScript file, ``module:factory`` + checkpoint, and
stable-audio-tools model configs (optional package, imported lazily).

The names below are imported on first use: the torch-free modules of this
package (``config``, ``info``, ``sat_sink``, ``windows``) run in the driver
(which never imports torch) and in decode and write tasks, which should not
pay for importing it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Encoder": "base",
    "ModelLoadError": "base",
    "ModuleEncoder": "base",
    "ModelConfig": "config",
    "posterior_noise": "functional",
    "sample_posterior": "functional",
    "LoadedEncoder": "loading",
    "ModelInfo": "info",
    "inspect_encoder": "loading",
    "load_encoder": "loading",
    "probe_encoder": "loading",
    "ReferenceAutoencoder": "reference",
    "ReferenceModelConfig": "config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
