"""The ``model:`` section of the encode job's config: which encoder to load, and from where.

No torch here: the driver validates this config and never imports torch (``reference`` builds the
built-in model where it runs).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import changed_fields

ModelKind = Literal["builtin", "torchscript", "factory", "stable-audio-tools"]


class ReferenceModelConfig(BaseModel):
    """Shape of the built-in model. ``downsampling_ratio`` is the product of ``strides``."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(44100, gt=0)
    channels: int = Field(2, ge=1, description="Audio channels the model takes.")
    latent_dim: int = Field(16, ge=1, description="Latent channels D (the posterior has 2 * D).")
    hidden: int = Field(8, ge=1, description="Channels after the input convolution.")
    strides: list[int] = Field(default_factory=lambda: [4, 4, 4, 4], min_length=1)
    seed: int = Field(0, description="Weight seed.")

    @field_validator("strides")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(s < 1 for s in value):
            raise ValueError(f"strides must be >= 1, got {value}")
        return value

    @property
    def downsampling_ratio(self) -> int:
        return math.prod(self.strides)


# The keys each kind reads.
KIND_KEYS: dict[str, set[str]] = {
    "builtin": {"kind", "builtin"},
    "torchscript": {"kind", "path", "downsampling_ratio", "codebook_size"},
    "factory": {"kind", "factory", "factory_kwargs", "checkpoint", "downsampling_ratio", "codebook_size"},
    "stable-audio-tools": {"kind", "path", "checkpoint", "codebook_size"},
}


class ModelConfig(BaseModel):
    """One encoder.

    - ``builtin``: the reference VAE (``builtin:`` sets its shape and weight seed).
    - ``torchscript``: ``path`` to a ``torch.jit.save`` file.
    - ``factory``: ``factory: "package.module:function"`` (or ``"/path/file.py:function"``)
      called with ``factory_kwargs``; then ``checkpoint`` (a state dict,
      ``torch.load(weights_only=True)`` or ``.safetensors``) is loaded into it.
    - ``stable-audio-tools``: ``path`` to the model config JSON plus ``checkpoint``
      (needs the optional stable-audio-tools package).

    Paths may be local or any fsspec URL (read with the job's ``storage_options``).
    """

    model_config = ConfigDict(extra="forbid")
    kind: ModelKind = "builtin"
    path: str | None = Field(None, description="TorchScript file, or stable-audio-tools model config JSON.")
    factory: str | None = Field(None, description="'package.module:function' or '/path/file.py:function'.")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="Weights (state dict) for factory / stable-audio-tools.")
    downsampling_ratio: int | None = Field(
        None, ge=1, description="Audio samples per latent frame, for models that do not declare it."
    )
    codebook_size: int | None = Field(
        None,
        ge=1,
        description="Discrete models that do not declare codebook_size: tokens lie in [0, codebook_size), "
        "stored in the narrowest integer type that holds them (unknown: int64).",
    )
    builtin: ReferenceModelConfig = Field(default_factory=ReferenceModelConfig)

    @model_validator(mode="after")
    def _kind_has_its_keys(self) -> ModelConfig:
        needs = {"torchscript": ("path",), "factory": ("factory",), "stable-audio-tools": ("path", "checkpoint")}
        missing = [f"model.{name}" for name in needs.get(self.kind, ()) if not getattr(self, name)]
        if missing:
            raise ValueError(f"model.kind {self.kind!r} needs {' and '.join(missing)}")
        # A key the kind never reads was ignored: ``model: {path: vae.ts}`` without ``kind`` encoded
        # everything with the built-in model's untrained weights.
        unused = sorted(changed_fields(self) - KIND_KEYS[self.kind])
        if unused:
            names = ", ".join(f"model.{name}" for name in unused)
            if "kind" in self.model_fields_set:
                raise ValueError(f"model.kind {self.kind!r} does not read {names}: remove it")
            kinds = sorted(kind for kind, keys in KIND_KEYS.items() if set(unused) <= keys)
            fix = f"set model.kind ({' or '.join(kinds)})" if kinds else "no one model.kind reads them all"
            raise ValueError(f"model.kind 'builtin' (the default) does not read {names}; {fix}")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"model.factory must be 'module:function', got {self.factory!r}")
        return self
