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

import importlib
import importlib.util
import inspect
import io
import os
import pickle
import re
import sys
import warnings
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator

from ..storage import get_fs
from .base import OutputKind, Teacher, TeacherLoadError, TeacherOutput, bytes_sha256
from .spec import TeacherSpecBase

InputLayout = Literal["batch_time", "batch_channel_time"]


# ---- loading ---------------------------------------------------------------------------
def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """A model file from a local path or any fsspec URL."""
    try:
        fs, path = get_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TeacherLoadError(f"model file not found: {uri}") from None
    except Exception as e:
        raise TeacherLoadError(f"cannot read model file {uri}: {type(e).__name__}: {e}") from None


def load_weights_only(data: bytes, uri: str) -> Any:
    """``torch.load(weights_only=True)``; a checkpoint that needs code is refused, saying why."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        needs = f" (it needs {', '.join(dict.fromkeys(found))})" if found else ""
        raise TeacherLoadError(
            f"checkpoint {uri} needs pickled code to load{needs}. Checkpoints are loaded with "
            "torch.load(weights_only=True), which never runs code from a file. Save the weights only "
            "(torch.save(model.state_dict(), path)) and build the model with a module:factory teacher, "
            "or export it with torch.jit.script / torch.jit.trace and use kind: torchscript") from None
    except Exception as e:
        raise TeacherLoadError(f"checkpoint {uri} cannot be loaded: {type(e).__name__}: {e}") from None


def state_dict_of(checkpoint: Any, key: str | None, uri: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: itself, ``checkpoint[key]``, or the usual ``state_dict``/``model``."""
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise TeacherLoadError(f"checkpoint {uri} has no entry {key!r} (state_dict_key)")
        checkpoint = checkpoint[key]
    elif isinstance(checkpoint, dict) and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        for candidate in ("state_dict", "model", "model_state_dict"):
            if isinstance(checkpoint.get(candidate), dict):
                checkpoint = checkpoint[candidate]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise TeacherLoadError(f"checkpoint {uri} holds no state dict of tensors; set state_dict_key")
    return checkpoint


def resolve_factory(reference: str) -> Callable[..., torch.nn.Module]:
    """``package.module:name`` or ``path/to/file.py:name`` -> the callable."""
    target, _, attribute = reference.rpartition(":")
    if not target or not attribute:
        raise TeacherLoadError(f"factory {reference!r} must look like 'package.module:function' or 'file.py:function'")
    try:
        if target.endswith(".py"):
            module = _module_from_file(target)
        else:
            module = importlib.import_module(target)
    except TeacherLoadError:
        raise
    except Exception as e:
        raise TeacherLoadError(f"factory {reference!r}: cannot import {target}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise TeacherLoadError(f"factory {reference!r}: {target} has no callable {attribute!r}")
    return factory


def _module_from_file(path: str):
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise TeacherLoadError(f"factory file not found: {path}")
    name = "_teacher_factory_" + bytes_sha256(path.encode())[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def factory_code_sha256(reference: str) -> str:
    """Hash of the factory's source file, so editing the model code changes the fingerprint."""
    factory = resolve_factory(reference)
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:
        source = None
    if not source or not os.path.exists(source):
        return ""
    with open(source, "rb") as f:
        return bytes_sha256(f.read())


# ---- the teacher ------------------------------------------------------------------------
class ModelTeacher(Teacher):
    """Wraps a loaded ``nn.Module`` or ``ScriptModule``."""

    def __init__(self, name: str, kind: str, module: torch.nn.Module, sample_rate: int,
                 outputs: dict[str, OutputKind], input_layout: InputLayout, version: str):
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
            if output.kind == "waveform" and isinstance(value, torch.Tensor) and value.ndim == 3 and value.shape[1] == 1:
                named[output.name] = value[:, 0]      # [B, 1, T] -> [B, T]
        return {n: v.float() for n, v in named.items() if n in names}


class UserSpecBase(TeacherSpecBase):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Column prefix (required).")
    sample_rate: int = Field(..., gt=0, description="The rate the model expects; audio is resampled to it.")
    outputs: dict[str, OutputKind] = Field(
        default_factory=lambda: {"y": "waveform"},
        description="Output names in the order the model returns them, each 'waveform' or 'tensor'.")
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
        data = read_bytes(self.path)
        try:
            with warnings.catch_warnings():
                # torch 2.14 marks TorchScript deprecated; it is still the one self-contained model file format.
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(io.BytesIO(data), map_location="cpu"), data
        except Exception as e:
            raise TeacherLoadError(f"{self.path} is not a TorchScript model: {type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None

    def build(self) -> ModelTeacher:
        module, _ = self._load()
        return ModelTeacher(self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout,
                            self.version)

    def identity(self) -> dict[str, Any]:
        return self.base_identity(self.version, bytes_sha256(read_bytes(self.path)), self.sample_rate)


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
        data = read_bytes(self.checkpoint)
        return state_dict_of(load_weights_only(data, self.checkpoint), self.state_dict_key, self.checkpoint), data

    def build(self) -> ModelTeacher:
        state, _ = self.load_state_dict()
        factory = resolve_factory(self.factory)
        try:
            module = factory(**self.kwargs)
        except Exception as e:
            raise TeacherLoadError(f"factory {self.factory} failed: {type(e).__name__}: {e}") from None
        if not isinstance(module, torch.nn.Module):
            raise TeacherLoadError(f"factory {self.factory} returned {type(module).__name__}, not a torch.nn.Module")
        if state is not None:
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise TeacherLoadError(f"checkpoint {self.checkpoint} does not fit {self.factory}: "
                                       f"{str(e).splitlines()[0]}") from None
        return ModelTeacher(self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout,
                            self.version)

    def identity(self) -> dict[str, Any]:
        _, data = self.load_state_dict()      # refuses pickled-code checkpoints here, on the driver
        identity = self.base_identity(self.version, bytes_sha256(data) if data else "", self.sample_rate)
        identity["factory"] = self.factory
        identity["kwargs"] = self.kwargs
        identity["code_sha256"] = factory_code_sha256(self.factory)
        return identity
