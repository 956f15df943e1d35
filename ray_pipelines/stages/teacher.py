"""The teacher stage: run every teacher on a batch of clips, batched, on the device.

``{"key", "window", <audio column> [B, T], "error", ...}`` in; ``x`` [B, T],
``y`` (when a teacher makes one) and ``<teacher>_<output>`` columns out, all
in the job's ``dtype`` with shapes fixed by the config. Audio is resampled
to each teacher's rate on the device (one resampler per rate, built once);
waveform outputs are resampled back to the job's rate. Rows that arrive as
errors pass through with zero outputs; a row whose teacher output is not
finite becomes an error row naming the teacher.

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

from ..teachers import Teacher, build_teacher, column_name
from .device import pick_device
from .rows import take_rows

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Kaiser-windowed sinc as librosa's "kaiser_best": negligible cost next to any teacher.
RESAMPLE_KWARGS = dict(
    lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492
)
# Columns the decoders hand over that the stage casts to the output dtype.
FLOAT_COLUMNS = ("f0", "db")


class TeacherStage:
    """Callable over NumPy batches (Ray Data ``map_batches``); runs without Ray too.

    ``teachers``: teacher specs as dicts (see ``ray_pipelines.teachers``).
    ``chunk_size``: most rows per teacher call on CUDA (bounds device memory); 1 on CPU.
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
    ):
        self.device = pick_device(device)
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self.out_dtype = np.dtype(dtype)
        self.input_column = input_column
        self.chunk_size = chunk_size if self.device.type == "cuda" else 1
        self.autocast_dtype = AUTOCAST_DTYPES[autocast] if autocast else None
        self.teachers: list[Teacher] = [build_teacher(spec).to(self.device) for spec in teachers]
        self.resamplers: dict[tuple[int, int], torch.nn.Module] = {}
        # One silent clip through every teacher: output shapes for zero-filled error rows, and a
        # broken teacher fails here, when the actor starts, not row by row.
        probe = self.probe(torch.zeros(1, num_samples, device=self.device))
        self.shapes = {name: tuple(value.shape[1:]) for name, value in probe.items()}

    def probe(self, silence: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teachers' outputs for a silent clip; a teacher that fails is named with the clip's length
        (the actor's start fails with it: a clip too short for the teacher's frames, a broken model)."""
        try:
            return self.run_teachers(silence)
        except Exception as error:
            failing = [t.name for t in self.teachers if not self._runs(t, silence)] or [t.name for t in self.teachers]
            seconds = self.num_samples / self.sample_rate
            raise ValueError(
                f"teacher {', '.join(failing)} fails on a silent clip of the job's duration ({self.num_samples} "
                f"samples at {self.sample_rate} Hz, {seconds:g} s): {type(error).__name__}: {error}"
            ) from error

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

    def _runs(self, teacher: Teacher, audio: torch.Tensor) -> bool:
        try:
            self.run_teachers(audio, [teacher])
            return True
        except Exception:
            return False

    def run_teachers(self, audio: torch.Tensor, teachers: list[Teacher] | None = None) -> dict[str, torch.Tensor]:
        """``[B, T]`` at the job's rate on the device -> ``{column: [B, ...]}`` float32 (of ``teachers``,
        by default all of them)."""
        out: dict[str, torch.Tensor] = {}
        at_rate: dict[int, torch.Tensor] = {}  # teachers of one rate share the resampled clips
        with torch.inference_mode():
            for teacher in self.teachers if teachers is None else teachers:
                if teacher.sample_rate not in at_rate:
                    at_rate[teacher.sample_rate] = self.resample(audio, self.sample_rate, teacher.sample_rate)
                inputs = at_rate[teacher.sample_rate]
                with self._autocast():
                    results = teacher(inputs)
                for spec in teacher.outputs:
                    value = results[spec.name].float()
                    if spec.kind == "waveform":
                        value = _fit_length(
                            self.resample(value, teacher.sample_rate, self.sample_rate), self.num_samples
                        )
                    out[column_name(teacher.name, spec.name)] = value
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop(self.input_column)
        n = len(audio)
        errors = batch["error"].astype(object).copy()
        outputs = {name: np.zeros((n, *shape), dtype=self.out_dtype) for name, shape in self.shapes.items()}
        ok = np.flatnonzero(errors == "")
        for start in range(0, len(ok), self.chunk_size):
            rows = ok[start : start + self.chunk_size]
            wave = torch.from_numpy(np.ascontiguousarray(take_rows(audio, rows), dtype=np.float32)).to(self.device)
            for name, value in self.run_teachers(wave).items():
                values = value.cpu().numpy()
                if values.shape[1:] != self.shapes[name]:
                    raise RuntimeError(
                        f"teacher output {name} has shape {values.shape[1:]}, expected "
                        f"{self.shapes[name]}: outputs must have one shape per config"
                    )
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


def _fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to ``length`` (resampling can be off by a sample)."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))
