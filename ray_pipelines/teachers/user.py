"""User teachers: a TorchScript file, or ``module:factory`` plus a weights-only checkpoint.

Either way the model takes ``[B, T]`` (or ``[B, 1, T]`` with
``input_layout: batch_channel_time``) at ``sample_rate`` and returns a tensor,
a tuple of tensors (in the order of ``outputs``) or a dict keyed by output
name. A ``waveform`` output (e.g. ``y`` of an effect model) is resampled back
to the job's rate; ``tensor`` outputs are stored as they come.

Checkpoints are loaded with ``torch.load(weights_only=True)``: a file that
needs pickled Python code (a whole ``nn.Module`` saved with ``torch.save``)
is refused with a :class:`TeacherLoadError` saying what to save instead.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from ..models import (
    build_from_factory,
    bytes_sha256,
    factory_code_sha256,
    load_state_dict,
    load_torchscript,
    read_model_file,
)
from .base import OutputKind, Teacher, TeacherLoadError, TeacherOutput
from .spec import TeacherSpecBase

InputLayout = Literal["batch_time", "batch_channel_time"]


# ---- the teacher ------------------------------------------------------------------------
class ModelTeacher(Teacher):
    """Wraps a loaded ``nn.Module`` or ``ScriptModule``."""

    def __init__(
        self,
        name: str,
        kind: str,
        module: torch.nn.Module,
        sample_rate: int,
        outputs: dict[str, OutputKind],
        input_layout: InputLayout,
        version: str,
    ):
        super().__init__(name)
        self.kind = kind
        self.module = module.eval()
        self.sample_rate = sample_rate
        self.outputs = tuple(TeacherOutput(n, k) for n, k in outputs.items())
        self.input_layout = input_layout
        self.version = version

    def modules(self) -> list[torch.nn.Module]:
        return [self.module]

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.module(audio[:, None] if self.input_layout == "batch_channel_time" else audio)
        names = [o.name for o in self.outputs]
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            named = dict(result)
        elif isinstance(result, (tuple, list)):
            if len(result) < len(names):
                raise RuntimeError(f"teacher {self.name!r} returned {len(result)} tensors for outputs {names}")
            named = dict(zip(names, result))
        else:
            raise RuntimeError(f"teacher {self.name!r} returned {type(result).__name__}, not tensors")
        for output in self.outputs:
            value = named.get(output.name)
            if (
                output.kind == "waveform"
                and isinstance(value, torch.Tensor)
                and value.ndim == 3
                and value.shape[1] == 1
            ):
                named[output.name] = value[:, 0]  # [B, 1, T] -> [B, T]
        return {n: v.float() for n, v in named.items() if n in names}


class UserSpecBase(TeacherSpecBase):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Column prefix (required).")
    sample_rate: int = Field(..., gt=0, description="The rate the model expects; audio is resampled to it.")
    outputs: dict[str, OutputKind] = Field(
        default_factory=lambda: {"y": "waveform"},
        description="Output names in the order the model returns them, each 'waveform' or 'tensor'.",
    )
    input_layout: InputLayout = "batch_time"
    version: str = Field("", description="Your model's version, recorded in the manifest and fingerprint.")

    @field_validator("outputs")
    @classmethod
    def _some_outputs(cls, value: dict[str, OutputKind]) -> dict[str, OutputKind]:
        if not value:
            raise ValueError("a teacher needs at least one output")
        bad = [n for n in value if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n)]
        if bad:
            raise ValueError(f"output names must be identifiers: {bad}")
        return value

    def default_name(self) -> str:
        return self.name

    def declared_outputs(self) -> tuple[TeacherOutput, ...]:
        return tuple(TeacherOutput(n, k) for n, k in self.outputs.items())


class TorchScriptSpec(UserSpecBase):
    """``kind: torchscript`` — a ``torch.jit.save``d model file (local path or URL)."""

    kind: Literal["torchscript"] = "torchscript"
    path: str = Field(..., description="TorchScript file: local path or fsspec URL.")

    def _load(self) -> tuple[torch.nn.Module, bytes]:
        data = read_model_file(self.path)
        return load_torchscript(data, self.path), data

    def build(self) -> ModelTeacher:
        module, _ = self._load()
        return ModelTeacher(
            self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout, self.version
        )

    def identity(self) -> dict[str, Any]:
        return self.base_identity(self.version, bytes_sha256(read_model_file(self.path)), self.sample_rate)


class FactorySpec(UserSpecBase):
    """``kind: factory`` — ``factory(**kwargs)`` builds the module; ``checkpoint`` holds its weights."""

    kind: Literal["factory"] = "factory"
    factory: str = Field(..., description="'package.module:function' or 'path/to/file.py:function'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    checkpoint: str | None = Field(None, description="State dict file (torch.save(model.state_dict(), ...)).")
    state_dict_key: str | None = Field(None, description="Entry of the checkpoint that holds the state dict.")

    def load_state_dict(self) -> tuple[dict[str, torch.Tensor] | None, bytes]:
        if self.checkpoint is None:
            return None, b""
        data = read_model_file(self.checkpoint)
        return load_state_dict(data, self.checkpoint, self.state_dict_key), data

    def build(self) -> ModelTeacher:
        state, _ = self.load_state_dict()
        try:
            module = build_from_factory(self.factory, self.kwargs, state, self.checkpoint or "")
        except TeacherLoadError:
            raise
        except Exception as e:
            raise TeacherLoadError(f"factory {self.factory} failed: {type(e).__name__}: {e}") from None
        return ModelTeacher(
            self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout, self.version
        )

    def identity(self) -> dict[str, Any]:
        _, data = self.load_state_dict()  # refuses pickled-code checkpoints here, on the driver
        identity = self.base_identity(self.version, bytes_sha256(data) if data else "", self.sample_rate)
        identity["factory"] = self.factory
        identity["kwargs"] = self.kwargs
        identity["code_sha256"] = factory_code_sha256(self.factory)
        return identity
