"""What teachers declare, without torch: outputs, column names, weight-file hashes, the load error.

The teacher job's config and its fingerprint (on the driver, which never imports torch) use these;
``base`` (the :class:`~.base.Teacher` interface, in the actors) re-exports them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from ..model_files import ModelLoadError

# "waveform": audio at the teacher's rate, resampled back to the job's rate and
# cut/padded to the job's clip length before it is stored; "tensor": stored as is.
OutputKind = Literal["waveform", "tensor"]


# A teacher that cannot be built: the shared user-model error (a ConfigError: CLI exit 2).
TeacherLoadError = ModelLoadError


@dataclass(frozen=True)
class TeacherOutput:
    name: str
    kind: OutputKind = "tensor"


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
