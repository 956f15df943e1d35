"""The teacher stage: run every teacher on a batch of clips, batched, on the device.

``{"key", "window", <audio column> [B, T], "error", ...}`` in; ``x`` [B, T],
``y`` (when a teacher makes one) and ``<teacher>_<output>`` columns out, all
in the job's ``dtype`` with shapes fixed by the config. Audio is resampled
to each teacher's rate on the device (one resampler per rate, built once);
waveform outputs are resampled back to the job's rate. Rows that arrive as
errors pass through with zero outputs; a row whose teacher output is not
finite becomes an error row naming the teacher. A teacher that raises on a
chunk is run again clip by clip: the clips it still raises on become error
rows (``teacher failed: <teacher>: ...``), the others keep their outputs, as
the score and encode stages do (one clip never costs its block); a chunk whose
clips all run alone is warned of once (a model that fails only when batched).

On CUDA, ``chunk_size`` clips go through each teacher at once. On CPU clips
go one at a time: batched CPU kernels round differently for other batch
sizes (PESTO's and CREPE's f0 move by ~3e-5 Hz), which would make a clip's
bytes depend on its block, and batching gains little there (measured: PESTO
1.5x, CREPE none).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torchaudio

from ..error_text import describe
from ..models import probe_audio, weights_sha256
from ..teachers import Teacher, TeacherLoadError, build_teacher, column_name
from .device import pick_device
from .rows import BatchOnlyFailure, failure_reason, float_rows, run_else_row_by_row

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Kaiser-windowed sinc as librosa's "kaiser_best": negligible cost next to any teacher.
RESAMPLE_KWARGS = dict(
    lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492
)
# Columns the decoders hand over that the stage casts to the output dtype.
FLOAT_COLUMNS = ("f0", "db")
# What a teacher that fails on a chunk but on none of its clips alone likely is.
BATCH_ONLY_HINT = (
    "A user model that takes one clip as [C, T] (a Conv1d) reads a batch [B, T] as one clip of B channels: "
    "give it input_layout: batch_channel_time ([B, 1, T])"
)


class TeacherFailed(RuntimeError):
    """A teacher raised (or gave outputs it did not declare) on the clips it was handed."""

    def __init__(self, teacher: str, error: Exception):
        self.teacher, self.reason = teacher, describe(error)
        super().__init__(f"{teacher}: {self.reason}")


class TeacherStage:
    """Callable over NumPy batches (Ray Data ``map_batches``); runs without Ray too.

    ``teachers``: teacher specs as dicts (see ``ray_pipelines.teachers``).
    ``chunk_size``: most rows per teacher call on CUDA (bounds device memory); 1 on CPU.
    ``built_weights``: ``{teacher name: weights SHA-256}`` the driver hashed for factory teachers without a
    checkpoint; a teacher built here with other weights fails the actor's start.
    """

    def __init__(
        self,
        *,
        teachers: list[dict[str, Any]],
        sample_rate: int,
        num_samples: int,
        dtype: str = "float32",
        autocast: str | None = None,
        input_column: str = "audio",
        chunk_size: int = 32,
        device: str | None = None,
        built_weights: dict[str, str] | None = None,
    ):
        self.device = pick_device(device)
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self.out_dtype = np.dtype(dtype)
        self.input_column = input_column
        self.chunk_size = chunk_size if self.device.type == "cuda" else 1
        self.autocast_dtype = AUTOCAST_DTYPES[autocast] if autocast else None
        self.teachers: list[Teacher] = [build_teacher(spec) for spec in teachers]
        for teacher in self.teachers:
            _check_built_weights(teacher, (built_weights or {}).get(teacher.name))
            teacher.to(self.device)
        self.resamplers: dict[tuple[int, int], torch.nn.Module] = {}
        self.batch_only = BatchOnlyFailure("a teacher", BATCH_ONLY_HINT, describe=str)  # str: "<teacher>: ..."
        # One test clip through every teacher: output shapes for zero-filled error rows, and a broken
        # teacher fails here, when the actor starts, not row by row.
        probe = self.probe(probe_audio(1, num_samples).to(self.device))
        self.shapes = {name: tuple(value.shape[1:]) for name, value in probe.items()}

    def probe(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teachers' outputs for a test clip; a teacher that fails is named with the clip's length
        (the actor's start fails with it: a clip too short for the teacher's frames, a broken model)."""
        try:
            return self.run_teachers(clip)
        except TeacherFailed as failed:
            seconds = self.num_samples / self.sample_rate
            raise ValueError(
                f"teacher {failed.teacher} fails on a test clip of the job's duration (quiet noise, "
                f"{self.num_samples} samples at {self.sample_rate} Hz, {seconds:g} s): {failed.reason}"
            ) from failed.__cause__

    @property
    def columns(self) -> list[str]:
        return list(self.shapes)

    def resampler(self, source: int, target: int) -> torch.nn.Module:
        if (source, target) not in self.resamplers:
            self.resamplers[(source, target)] = torchaudio.transforms.Resample(source, target, **RESAMPLE_KWARGS).to(
                self.device
            )
        return self.resamplers[(source, target)]

    def resample(self, audio: torch.Tensor, source: int, target: int) -> torch.Tensor:
        return audio if source == target else self.resampler(source, target)(audio)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def run_teachers(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, T]`` at the job's rate on the device -> ``{column: [B, ...]}`` float32; a teacher that
        raises raises :class:`TeacherFailed` naming it."""
        out: dict[str, torch.Tensor] = {}
        at_rate: dict[int, torch.Tensor] = {}  # teachers of one rate share the resampled clips
        with torch.inference_mode():
            for teacher in self.teachers:
                if teacher.sample_rate not in at_rate:
                    at_rate[teacher.sample_rate] = self.resample(audio, self.sample_rate, teacher.sample_rate)
                try:
                    with self._autocast():
                        results = teacher(at_rate[teacher.sample_rate])
                    values = {spec: results[spec.name].float() for spec in teacher.outputs}
                except Exception as e:
                    raise TeacherFailed(teacher.name, e) from e
                for spec, value in values.items():
                    if spec.kind == "waveform":
                        value = _fit_length(
                            self.resample(value, teacher.sample_rate, self.sample_rate), self.num_samples
                        )
                    out[column_name(teacher.name, spec.name)] = value
        return out

    def run_guarded(
        self, audio: np.ndarray, rows: np.ndarray
    ) -> list[tuple[np.ndarray, dict[str, torch.Tensor] | str]]:
        """The teachers' outputs for ``audio[rows]``, or where a teacher raises, ``rows`` again one by one:
        ``(rows, outputs)`` per part that ran, ``(row, "teacher failed: ...")`` per clip that still raises."""

        def run(part: np.ndarray) -> dict[str, torch.Tensor]:
            return self.run_teachers(float_rows(audio, part).to(self.device))

        return run_else_row_by_row(
            run, rows, failure_reason("teacher", self.device), failure=TeacherFailed, batch_only=self.batch_only
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop(self.input_column)
        n = len(audio)
        errors = batch["error"].astype(object).copy()
        outputs = {name: np.zeros((n, *shape), dtype=self.out_dtype) for name, shape in self.shapes.items()}
        ok = np.flatnonzero(errors == "")
        chunks = [ok[start : start + self.chunk_size] for start in range(0, len(ok), self.chunk_size)]
        for rows, teacher_outputs in (part for chunk in chunks for part in self.run_guarded(audio, chunk)):
            if isinstance(teacher_outputs, str):  # the clip a teacher raised on: its outputs stay zeros
                errors[rows] = teacher_outputs
                continue
            for name, value in teacher_outputs.items():
                values = value.cpu().numpy()
                if values.shape[1:] != self.shapes[name]:  # a model whose output shape follows its input
                    for row in rows:
                        errors[row] = errors[row] or (
                            f"teacher output {name} has shape {values.shape[1:]}, expected {self.shapes[name]} "
                            "(the test clip's when the stage started): outputs must have one shape per config"
                        )
                    continue
                finite = np.isfinite(values.reshape(len(rows), -1)).all(axis=1)
                for row in rows[~finite]:
                    if errors[row] == "":
                        errors[row] = f"non-finite teacher output: {name}"
                outputs[name][rows] = values.astype(self.out_dtype)
        batch["error"] = errors
        batch["x"] = np.asarray(audio, dtype=self.out_dtype)
        for name in FLOAT_COLUMNS:
            if name in batch:
                batch[name] = np.asarray(batch[name], dtype=self.out_dtype)
        batch.update(outputs)
        return batch


def _check_built_weights(teacher: Teacher, expected: str | None) -> None:
    """A factory teacher without a checkpoint must have here the weights the driver hashed (``expected``):
    one that downloads them or initialises unseeded ran another model in each actor."""
    if expected is None:
        return
    (module,) = teacher.modules()
    built = weights_sha256(module)
    if built != expected:
        raise TeacherLoadError(
            f"teacher {teacher.name}: the model built here has other weights than the one the driver checked "
            f"(sha256 {built[:12]}, not {expected[:12]}): its outputs would be another model's. A factory without "
            "a checkpoint must build the same weights every time (seed its initialisation, or give checkpoint)"
        )


def _fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to ``length`` (resampling can be off by a sample)."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))
