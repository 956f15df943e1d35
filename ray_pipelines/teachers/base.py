"""The teacher interface: what a teacher declares and how it is called.

A teacher is a frozen model (or DSP function) that maps a batch of mono
waveforms ``[B, T]`` at its own ``sample_rate`` to named outputs, each a
``[B, ...]`` tensor of a fixed shape for a fixed input length. The stage
resamples the job's audio to ``sample_rate`` on the device before calling
it; the teacher never sees another rate.
"""

from __future__ import annotations

import abc

import torch

from .common import (  # noqa: F401  (re-exported: what teachers declare is torch-free, in common)
    OutputKind,
    TeacherLoadError,
    TeacherOutput,
    column_name,
    describe,
    file_sha256,
)


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
