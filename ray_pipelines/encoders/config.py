"""The ``model:`` section of the encode job's config: which encoder to load, and from where."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .reference import ReferenceModelConfig

ModelKind = Literal["builtin", "torchscript", "factory", "stable-audio-tools"]


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
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"model.factory must be 'module:function', got {self.factory!r}")
        return self
