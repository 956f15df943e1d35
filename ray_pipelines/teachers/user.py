"""User teachers: a TorchScript file, or ``module:factory`` plus a weights-only checkpoint.

Either way the model takes ``[B, T]`` (or ``[B, 1, T]`` with
``input_layout: batch_channel_time``) at ``sample_rate`` and returns a tensor,
a tuple of tensors (in the order of ``outputs``) or a dict keyed by output
name. A ``waveform`` output (e.g. ``y`` of an effect model) is resampled back
to the job's rate; ``tensor`` outputs keep their shape. Every output is cast to
float32 here and stored in the job's ``dtype`` (integers and booleans too); a
complex one is refused when the actor starts (its imaginary part would be lost).

Checkpoints are loaded with ``torch.load(weights_only=True)``: a file that
needs pickled Python code (a whole ``nn.Module`` saved with ``torch.save``)
is refused with a :class:`TeacherLoadError` saying what to save instead.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..model_files import bytes_sha256, factory_code_sha256, read_model_file
from ..models import ModelLoadError, build_from_factory, load_torchscript, model_classes, weights_sha256
from .base import OutputKind, Teacher, TeacherOutput
from .spec import (  # noqa: F401  (re-exported: the specs are torch-free, in spec)
    FactorySpec,
    InputLayout,
    TorchScriptSpec,
    UserSpecBase,
)

log = logging.getLogger(__name__)


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
        # A copy: the clips are the stored x (on the CPU, the decoded batch itself) and the other teachers'
        # input, and a model may change its input in place (x.div_(peak) changed both without a word).
        audio = audio.clone()
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
            named[output.name] = self._checked(output, named.get(output.name), *audio.shape)
        return {n: v.float() for n, v in named.items() if n in names}

    def _checked(self, output: TeacherOutput, value: Any, clips: int, samples: int) -> torch.Tensor:
        """An output as the stage stores it, or a RuntimeError saying what is wrong with it: a waveform of
        another shape was stored as it came ([B, 2, T] as two channels), one of [B] lost every block, and
        one of another length was cut or zero-padded to the clip's (out of step with ``x``)."""
        said = f"teacher {self.name!r} output {output.name!r}"
        if not isinstance(value, torch.Tensor):
            raise RuntimeError(f"{said} is {type(value).__name__}, not a tensor")
        if value.is_complex():  # cast to a real dtype, it lost its imaginary part (torch only warns)
            raise RuntimeError(
                f"{said} is complex ({str(value.dtype).removeprefix('torch.')}): outputs are stored as real "
                "numbers; return its real and imaginary parts as two outputs (x.real, x.imag), or its magnitude "
                "(x.abs())"
            )
        if output.kind == "waveform" and value.ndim == 3 and value.shape[1] == 1:
            value = value[:, 0]  # [B, 1, T] -> [B, T]
        if value.ndim == 0 or value.shape[0] != clips:
            raise RuntimeError(f"{said} has shape {list(value.shape)}: its first axis must be the clips' ({clips})")
        if output.kind == "waveform" and value.ndim != 2:
            raise RuntimeError(f"{said} has shape {list(value.shape)}: a waveform is [B, T] or [B, 1, T]")
        if output.kind == "waveform" and value.shape[1] != samples:
            raise RuntimeError(
                f"{said} has {value.shape[1]} samples for clips of {samples}: a waveform output keeps the clip's "
                "length (crop or pad it in the model), or it is out of step with x"
            )
        return value


def factory_digests(spec: dict[str, Any]) -> dict[str, str]:
    """The digests of a factory teacher's identity: its checkpoint's bytes (opened with
    ``torch.load(weights_only=True)`` first, which refuses one that needs pickled code), or without a
    checkpoint the built model's weights, and its code. ``FactorySpec.identity`` runs this in a child
    process when torch is not imported yet."""
    factory = FactorySpec.model_validate(spec)
    state, data = factory.load_state_dict()

    def build() -> torch.nn.Module:
        return build_from_factory(factory.factory, factory.kwargs, state, factory.checkpoint or "")

    # Built here too: a factory that fails, or a checkpoint that does not fit, is refused before Ray starts
    try:
        module = build()
    except ModelLoadError as e:
        if not _needs_a_gpu_here(e):
            raise
        # A factory that puts its model on a GPU itself, on a driver without one: the actors build it (as
        # before this check); its package's files are hashed, its classes' files elsewhere are not, and
        # without a checkpoint its weights are unknown here ("").
        log.warning("teacher factory %s needs a GPU to build; not checked on the driver: %s", factory.factory, e)
        module = None
    weights = bytes_sha256(data) if data else ""
    classes = model_classes(module) if module is not None else set()
    if module is not None and not data:
        # No checkpoint: the weights are whatever the factory builds (a download, a seeded or an unseeded
        # initialisation). Hashed, as the encode job does, and built twice (one at a time), so that a factory
        # giving other weights each time is refused here (each actor compares its own: built_weights).
        weights = weights_sha256(module)
        del module
        if weights_sha256(build()) != weights:
            raise ModelLoadError(
                f"factory {factory.factory} builds other weights each time it is called: every actor would run "
                "another model. Seed its initialisation, or give checkpoint"
            )
    return {"weights_sha256": weights, "code_sha256": factory_code_sha256(factory.factory, classes)}


def _needs_a_gpu_here(error: BaseException) -> bool:
    cause = error.__cause__
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    return not torch.cuda.is_available() and any(
        mark in text for mark in ("CUDA", "cuda", "NVIDIA driver", "no GPU", "AcceleratorError")
    )


def torchscript_digest(path: str) -> str:
    """A TorchScript teacher's file hashed, once it loads as TorchScript (``TorchScriptSpec.identity``)."""
    data = read_model_file(path, key="path")
    load_torchscript(data, path)
    return bytes_sha256(data)
