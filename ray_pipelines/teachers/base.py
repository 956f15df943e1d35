"""The teacher interface: what a teacher declares and how it is called.

A teacher is a frozen model (or DSP function) that maps a batch of mono
waveforms ``[B, T]`` at its own ``sample_rate`` to named outputs, each a
``[B, ...]`` tensor of a fixed shape for a fixed input length. The stage
resamples the job's audio to ``sample_rate`` on the device before calling
it; the teacher never sees another rate.
"""

from __future__ import annotations

import abc
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from ..models import ModelLoadError

# "waveform": audio at the teacher's rate, resampled back to the job's rate and
# cut/padded to the job's clip length before it is stored; "tensor": stored as is.
OutputKind = Literal["waveform", "tensor"]


# A teacher that cannot be built: the shared user-model error (a ConfigError: CLI exit 2).
TeacherLoadError = ModelLoadError


@dataclass(frozen=True)
class TeacherOutput:
    name: str
    kind: OutputKind = "tensor"


class Teacher(abc.ABC):
    """A batched, frozen teacher.

    Subclasses set ``kind``, ``version``, ``sample_rate`` and ``outputs`` and
    implement :meth:`forward` on ``[B, T]`` float32 audio already on the
    teacher's device. ``name`` prefixes the output columns
    (``<name>_<output>``; an output called ``y`` is stored as ``y``).
    """

    kind: str
    version: str
    sample_rate: int
    outputs: tuple[TeacherOutput, ...]

    def __init__(self, name: str):
        self.name = name
        self.device = torch.device("cpu")

    @abc.abstractmethod
    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, T]`` at ``sample_rate`` -> ``{output name: [B, ...]}``."""

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules to move between devices (none for pure functions)."""
        return []

    def to(self, device: torch.device | str) -> Teacher:
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self

    def __call__(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = self.forward(audio)
        missing = [o.name for o in self.outputs if o.name not in out]
        if missing:
            raise RuntimeError(f"teacher {self.name!r} returned no {', '.join(missing)}")
        return {o.name: out[o.name] for o in self.outputs}


def column_name(teacher_name: str, output: str) -> str:
    """Where a teacher output is stored: ``y`` stays ``y``, the rest are ``<teacher>_<output>``."""
    return "y" if output == "y" else f"{teacher_name}_{output}"


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a local file (cached per path, size and mtime: weight files are read once)."""
    stat = os.stat(path)
    return _file_sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def describe(teacher_identity: dict[str, Any]) -> str:
    """One line for logs: ``pesto (pesto-pitch 2.0.1 mir-1k_g7, weights 1a2b3c4d5e6f)``."""
    weights = teacher_identity.get("weights_sha256") or "none"
    return f"{teacher_identity['name']} ({teacher_identity['version']}, weights {weights[:12]})"
