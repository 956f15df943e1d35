"""The score config's sections for the scorers that load models, without torch.

The score job's config (validated on the driver, which never imports torch) holds these;
``dnsmos``, ``vad`` and ``models`` (the scorers, in the actors) re-export them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class DnsmosOptions(BaseModel):
    """The ``dnsmos`` section of a score config."""

    model_config = ConfigDict(extra="forbid")
    personalized: bool = Field(
        False, description="pDNSMOS: the personalized model, which also counts interfering talkers as noise."
    )


class VadOptions(BaseModel):
    """The ``vad`` section of a score config (Silero's get_speech_timestamps settings)."""

    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability at or above which a window is speech.")
    min_speech_ms: int = Field(250, ge=0, description="Shorter speech segments are dropped.")
    min_silence_ms: int = Field(100, ge=0, description="Silences shorter than this do not end a segment.")
    speech_pad_ms: int = Field(30, ge=0, description="Padding added on each side of a segment.")


class ModelSpec(BaseModel):
    """Which model reconstructs the spectrograms."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["reference", "torchscript", "factory"] = "reference"
    path: str | None = Field(None, description="torchscript: the archive (local path or fsspec URL).")
    factory: str | None = Field(
        None, description="factory: 'package.module:function' or 'path/to/file.py:function' returning an nn.Module."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="factory: keyword arguments.")
    checkpoint: str | None = Field(None, description="factory: state dict file, read with weights_only=True.")
    # The reference model's shape and weight seed.
    seed: int = Field(0, description="reference: weight seed.")
    patch: tuple[PositiveInt, PositiveInt] = Field((16, 16), description="reference: patch size (mel bins, frames).")
    dim: int = Field(64, gt=0)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.kind == "torchscript" and not self.path:
            raise ValueError("model.kind torchscript needs model.path (the torch.jit.save archive)")
        if self.kind == "factory":
            if not self.factory or ":" not in self.factory:
                raise ValueError(
                    "model.kind factory needs model.factory as 'package.module:function' or 'file.py:function'"
                )
        if self.kind == "reference" and self.dim % (2 * self.heads):
            raise ValueError(f"model.dim ({self.dim}) must be a multiple of 2 * model.heads ({2 * self.heads})")
        return self
