"""The config side of a teacher: one pydantic model per kind, with a ``kind`` tag.

A spec is what a job config holds and what travels to the actors (as a
plain dict); ``build()`` makes the :class:`~.base.Teacher` inside the actor,
``identity()`` says on the driver what enters the config fingerprint and the
manifest (name, kind, version, weights hash) without building anything.
"""

from __future__ import annotations

import abc
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .base import Teacher, TeacherOutput


class TeacherSpecBase(BaseModel, abc.ABC):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Column prefix for this teacher's outputs (<name>_<output>). Default: from the kind.",
    )

    @property
    def teacher_name(self) -> str:
        return self.name or self.default_name()

    @abc.abstractmethod
    def default_name(self) -> str: ...

    @abc.abstractmethod
    def declared_outputs(self) -> tuple[TeacherOutput, ...]: ...

    @abc.abstractmethod
    def build(self) -> Teacher: ...

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """``{"name", "kind", "version", "weights_sha256", ...}`` (JSON values only)."""

    def base_identity(self, version: str, weights_sha256: str, sample_rate: int) -> dict[str, Any]:
        return {
            "name": self.teacher_name,
            "kind": self.kind,
            "version": version,  # type: ignore[attr-defined]
            "weights_sha256": weights_sha256,
            "sample_rate": sample_rate,
            "outputs": [o.name for o in self.declared_outputs()],
        }
