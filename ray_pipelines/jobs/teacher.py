"""The teacher job: cache frozen teachers' outputs once, train students from the cache.

Inputs are audio files (clips of ``duration`` seconds, ``max_windows`` per
file) or the synthetic generator (``input: synth://`` and a ``synth``
block). Every clip goes through every teacher in an actor pool (batched, on
the GPU when there is one); the clip ``x``, the teachers' outputs (``y`` for
a waveform teacher, ``<teacher>_<output>`` otherwise) and, for synthetic
clips, the drawn ``f0``, ``db`` and ``family`` land in Parquet shards under
``{output}/train`` and ``{output}/val``.

    ray-pipelines teacher --config teacher-synth
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ray_pipelines.config import Codec, CommonConfig, LevelDb, Seconds, changed_fields
from ray_pipelines.engine.decode import Window, WindowDecoder, rows_to_batch
from ray_pipelines.engine.job import Job, StageSpec
from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES
from ray_pipelines.model_files import ModelUnreachable
from ray_pipelines.sources import InputItem
from ray_pipelines.splits import train_val_split
from ray_pipelines.synth import SynthConfig, sample_key, stored_f0, synth_sample
from ray_pipelines.teachers import FactorySpec, TeacherLoadError, TeacherSpec, column_name, describe

log = logging.getLogger(__name__)

# Imported in the actors only (the stage imports torch; the driver never does).
TEACHER_STAGE = "ray_pipelines.stages.teacher:TeacherStage"

SYNTH_INPUT = "synth://"
# Columns the job writes itself; teacher columns must not collide with them.
RESERVED_COLUMNS = frozenset(
    {
        "key",
        "window",
        "start_seconds",
        "valid_samples",
        "x",
        "f0",
        "db",
        "family",
        "source",
        "split",
        "error",
        "etag",
        "samples_per_input",
    }
)


# The keys only audio-file inputs read (synth:// makes its own clips and split).
AUDIO_FILE_KEYS = frozenset({"max_windows", "window_hop", "min_duration", "silence_db", "val_fraction"})


class TeacherConfig(CommonConfig):
    INPUT_SCHEMES: ClassVar[frozenset[str]] = frozenset({SYNTH_INPUT.removesuffix("://")})

    teachers: list[TeacherSpec] = Field(..., min_length=1, description="Teachers to run; each output is a column.")
    sample_rate: int = Field(44100, gt=0, description="Rate of the stored clips x (and y).")
    duration: float = Field(1.2, gt=0, description="Clip length in seconds; shorter audio is zero-padded.")
    dtype: Literal["float32", "float64"] = Field("float32", description="Stored dtype of every float column.")
    autocast: Literal["bf16", "fp16"] | None = Field(None, description="Run teachers under torch.autocast.")
    synth: SynthConfig | None = Field(None, description="The generator, when input is synth://.")
    # audio-file inputs
    max_windows: int | None = Field(1, ge=1, description="Clips per file (null: every window that fits).")
    window_hop: float | None = Field(None, gt=0, description="Seconds between clip starts (default: duration).")
    min_duration: Seconds = Field(0.05, description="Files shorter than this become error rows.")
    silence_db: LevelDb | None = Field(
        -90.0, description="Clips whose peak is below this (dBFS) become error rows; null keeps them."
    )
    val_fraction: float = Field(0.1, ge=0, le=1, description="Share of files in split 'val' (by file key).")
    batch_size: int = Field(32, ge=1, description="Clips per teacher call.")
    compression: Codec = Field(
        "none",
        description="Parquet codec. Uncompressed, the readers take each clip's samples where they lie in the "
        "page: a training epoch costs them about a quarter less CPU than with lz4, for 2.2x the bytes (lz4 keeps "
        "about 0.46 of a teacher signal's; the seeds' .pt caches are uncompressed too). lz4 where storage is "
        "short or training reads the cache from an object store, where the bytes fetched are the bound (on a "
        "local S3 server lz4's cache read 1.6x as fast).",
    )
    inputs_per_block: int = Field(32, ge=1, description="Inputs per block (one block = one shard file or more).")

    @model_validator(mode="before")
    @classmethod
    def _synth_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("input") == SYNTH_INPUT and data.get("synth") is None:
            data = {**data, "synth": {}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TeacherConfig:
        if self.synth is not None and self.input != SYNTH_INPUT:
            raise ValueError(f"synth is set but input is {self.input!r}; use input: {SYNTH_INPUT} for the generator")
        if self.synth is not None and self.synth.f0_range[1] >= self.sample_rate / 2:
            raise ValueError(  # a fundamental above Nyquist is heard at its alias, not at the f0 stored for it
                f"synth.f0_range: its top ({self.synth.f0_range[1]:g} Hz) must be below Nyquist "
                f"({self.sample_rate / 2:g} Hz at sample_rate {self.sample_rate}): a higher f0 aliases, and the "
                "clip's pitch is not the f0 stored for it"
            )
        if self.num_samples < 1:
            raise ValueError(f"duration {self.duration:g} s is under one sample at sample_rate {self.sample_rate}")
        ignored = sorted(changed_fields(self, AUDIO_FILE_KEYS)) if self.synth is not None else []
        if ignored:  # (they changed the fingerprint, and so refused a resume, while they changed nothing)
            raise ValueError(f"{', '.join(ignored)}: for audio-file inputs; input {SYNTH_INPUT} does not read them")
        for teacher in self.teachers:
            too_short = teacher.clip_too_short(self.num_samples, self.sample_rate)
            if too_short:
                raise ValueError(
                    f"duration {self.duration:g} s is too short for teacher {teacher.teacher_name}: {too_short}"
                )
        names = [t.teacher_name for t in self.teachers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"teacher names repeat: {', '.join(repeated)} (set name: on each)")
        makers_of_y = [t.teacher_name for t in self.teachers if any(o.name == "y" for o in t.declared_outputs())]
        if len(makers_of_y) > 1:
            raise ValueError(f"only one teacher may output y, got {', '.join(makers_of_y)}")
        columns = self.teacher_columns()
        clashes = sorted(set(columns) & (RESERVED_COLUMNS - {"y"}))
        if clashes:
            raise ValueError(f"teacher output columns clash with the job's own columns: {', '.join(clashes)}")
        shared = sorted({c for c in columns if columns.count(c) > 1})  # fx's a_b and fx_a's b: one kept
        if shared:
            makers = {
                column: [
                    f"{t.teacher_name}'s {o.name}"
                    for t in self.teachers
                    for o in t.declared_outputs()
                    if column_name(t.teacher_name, o.name) == column
                ]
                for column in shared
            }
            said = "; ".join(f"{column}: {' and '.join(who)}" for column, who in makers.items())
            raise ValueError(f"teacher outputs share a column name ({said}): rename a teacher or an output")
        return self

    @property
    def is_synth(self) -> bool:
        return self.synth is not None

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    def teacher_columns(self) -> list[str]:
        return [column_name(t.teacher_name, o.name) for t in self.teachers for o in t.declared_outputs()]

    def fingerprinted(self) -> dict[str, Any]:
        data = super().fingerprinted()
        if self.synth is not None and self.synth.validation:
            data.pop("seed", None)  # a validation set is the same whatever the seed
        return data


class WindowPlan:
    """Clip starts every ``hop`` seconds from 0, as many as fit (at least one), at most ``max_windows``."""

    def __init__(self, duration: float, hop: float | None, max_windows: int | None):
        self.duration, self.hop, self.max_windows = duration, hop or duration, max_windows

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        fits = 1 + max(0, int((file_seconds - self.duration) / self.hop + 1e-9))
        count = fits if self.max_windows is None else min(fits, self.max_windows)
        return [Window(i, i * self.hop) for i in range(count)]


class TrainValSplit:
    def __init__(self, seed: int, val_fraction: float):
        self.seed, self.val_fraction = seed, val_fraction

    def __call__(self, key: str) -> str:
        return train_val_split(self.seed, key, self.val_fraction)


class SynthDecoder:
    """The decode step for ``synth://`` inputs: an input row names a sample; generate it.

    Emits the same bookkeeping columns as ``WindowDecoder`` (one row per
    sample, ``window`` 0) plus ``x``, ``f0``, ``db`` and ``family``.
    """

    def __init__(self, *, synth: dict[str, Any], seed: int, sample_rate: int, num_samples: int, dtype: str):
        self.synth = SynthConfig.model_validate(synth)
        self.seed, self.sample_rate, self.num_samples = seed, sample_rate, num_samples
        self.dtype = np.dtype(dtype)

    def decode_input(self, item: dict[str, Any]) -> dict[str, Any]:
        row = {
            "key": item["key"],
            "window": 0,
            "samples_per_input": 1,
            "split": self.synth.split,
            "error": "",
            "etag": "",
            "source": item.get("source") or item["uri"],
            "start_seconds": 0.0,
        }
        try:
            audio, params = synth_sample(
                self.synth, self.seed, item["key"], int(item["sample_index"]), self.sample_rate, self.num_samples
            )
            if not np.isfinite(audio).all():
                raise ValueError("non-finite samples")
            row.update(x=audio.astype(self.dtype), f0=stored_f0(params), db=float(params.db), family=params.family)
        except Exception as e:  # never raise out of a decoder: the sample becomes an error row
            row.update(
                error=f"synth failed: {type(e).__name__}: {e}",
                x=np.zeros(self.num_samples, self.dtype),
                f0=0.0,
                db=0.0,
                family="",
            )
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for i in range(len(batch["key"])):
            item = {name: batch[name][i] for name in batch}
            skip = item.get("skip")
            if skip is not None and 0 in np.asarray(skip).tolist():
                continue
            rows.append(self.decode_input(item))
        return rows_to_batch(rows)


class TeacherJob(Job):
    name = "teacher"
    config_model = TeacherConfig
    index_column = "window"
    row_group_bytes = WHOLE_READ_ROW_GROUP_BYTES
    rows_label = "clips"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        # On the driver, before Ray: hash weights (and refuse pickled-code checkpoints) once.
        self.identities = []
        for i, spec in enumerate(config.teachers):
            try:
                self.identities.append(spec.identity())
            except (TeacherLoadError, ModelUnreachable) as e:
                raise type(e)(f"teachers[{i}] ({spec.teacher_name}): {e}") from None
        for identity in self.identities:
            log.info("teacher %s", describe(identity))

    # ---- planning -----------------------------------------------------------------
    def list_inputs(self) -> list[InputItem]:
        cfg = self.config
        if not cfg.is_synth:
            return super().list_inputs()
        split, total = cfg.synth.split, cfg.synth.num_samples
        return [
            InputItem(
                key=sample_key(split, i, total), uri=f"{SYNTH_INPUT}{split}/{i}", size=0, extra={"sample_index": i}
            )
            for i in range(total)
        ]

    def fingerprint_extra(self) -> dict[str, Any]:
        # Audio-file caches have a valid_samples column since 2026-12-07: caches written before are
        # refused rather than mixed with shards of another schema.
        return {"teachers": self.identities, **({} if self.config.is_synth else {"valid_samples": True})}

    # ---- per-row work -------------------------------------------------------------
    def decoder(self):
        c = self.config
        if c.is_synth:
            return SynthDecoder(
                synth=c.synth.model_dump(mode="json"),
                seed=c.seed,
                sample_rate=c.sample_rate,
                num_samples=c.num_samples,
                dtype=c.dtype,
            )
        return WindowDecoder(
            plan=WindowPlan(c.duration, c.window_hop, c.max_windows),
            sample_rate=c.sample_rate,
            duration=c.duration,
            index_column="window",
            split_of=TrainValSplit(c.seed, c.val_fraction),
            min_duration=c.min_duration,
            silence_db=c.silence_db,
            storage_options=c.storage_options,
            valid_column="valid_samples",  # the clip's samples of audio, the rest zero padding
        )

    def stage_kwargs(self) -> dict[str, Any]:
        c = self.config
        return dict(
            teachers=[t.model_dump(mode="json") for t in c.teachers],
            sample_rate=c.sample_rate,
            num_samples=c.num_samples,
            dtype=c.dtype,
            autocast=c.autocast,
            input_column="x" if c.is_synth else "audio",
            chunk_size=c.batch_size,
            built_weights=self.built_weights(),
        )

    def built_weights(self) -> dict[str, str]:
        """The weights hashed on the driver of factory teachers without a checkpoint (what they build: each
        actor compares its own); one the driver could not build (it needs a GPU) is left out."""
        return {
            identity["name"]: identity["weights_sha256"]
            for spec, identity in zip(self.config.teachers, self.identities)
            if isinstance(spec, FactorySpec) and spec.checkpoint is None and identity["weights_sha256"]
        }

    def stages(self) -> list[StageSpec]:
        return [StageSpec(TEACHER_STAGE, self.stage_kwargs(), batch_size=self.config.batch_size, gpu=True)]

    # ---- output -------------------------------------------------------------------
    @property
    def output_columns(self) -> list[str]:
        c = self.config
        teacher_columns = c.teacher_columns()
        columns = ["key", "window"] + ([] if c.is_synth else ["start_seconds", "valid_samples"]) + ["x"]
        columns += ["y"] if "y" in teacher_columns else []
        columns += ["f0", "db", "family"] if c.is_synth else []
        columns += [name for name in teacher_columns if name != "y"]
        return columns + ["source"]

    def schema_metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "ray_pipelines.teachers": json.dumps(self.identities, sort_keys=True),
            "ray_pipelines.sample_rate": str(c.sample_rate),
        }

    def throughput_units(self, rows: int) -> dict[str, float]:
        # windows of duration, a short clip's padding included (not the audio it held)
        return {"window seconds": rows * self.config.duration}


JOB = TeacherJob


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    return run_job_command("teacher", argv)  # None: this process's command line


if __name__ == "__main__":
    sys.exit(main())
