"""The augment job: pre-generated contrastive views.

For each clip and each version 0..N-1: one crop (its position drawn per
version), two independently augmented log-mel views of it (``view1``,
``view2``, ``[1, n_mels, T]``), in ``{output}/train`` and ``{output}/val``.

    ray-pipelines augment --config augment
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_pipelines.augment.params import (
    DRAWS_COLUMN,
    VALID_COLUMN,
    AugmentationChoices,
    SpectrogramPoolConfig,
    WaveformPoolConfig,
)
from ray_pipelines.config import CommonConfig, LevelDb, Seconds
from ray_pipelines.engine.decode import Window, WindowDecoder
from ray_pipelines.engine.job import Job, StageSpec
from ray_pipelines.mel_bands import mel_problem
from ray_pipelines.seeding import sample_rng
from ray_pipelines.splits import train_val_split

# Imported in the actors only (the stage imports torch; the driver never does).
AUGMENT_STAGE = "ray_pipelines.stages.augment:AugmentStage"


class AugmentConfig(CommonConfig):
    num_versions: int = Field(5, ge=1, description="Versions (independent crops) per clip.")
    sample_rate: int = Field(22050, gt=0)
    n_mels: int = Field(128, gt=0)
    duration: float = Field(3.0, gt=0, description="Crop length in seconds; shorter clips are zero-padded.")
    min_duration: Seconds = Field(0.05, description="Clips shorter than this become error rows.")
    silence_db: LevelDb | None = Field(
        -90.0, description="A crop whose peak is below this (dBFS) is an error row; null keeps silent crops."
    )
    num_waveform_augs: int = Field(3, ge=0)
    num_spectrogram_augs: int = Field(2, ge=0)
    val_fraction: float = Field(0.2, ge=0, le=1)
    n_fft: int = Field(2048, gt=0)
    hop_length: int = Field(512, gt=0)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = None
    top_db: float | None = Field(80.0, gt=0)
    waveform_pool: WaveformPoolConfig = Field(default_factory=WaveformPoolConfig)
    spectrogram_pool: SpectrogramPoolConfig = Field(default_factory=SpectrogramPoolConfig)
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = Field(32, ge=1)
    # 32 clips (320 views, about 21 MB) per block: per-block costs (a write task, the driver's
    # scheduling) fall to a tenth of the work, where 8 left a quarter of the CPU outside the actors.
    inputs_per_block: int = Field(32, ge=1, description="Clips per block (a crash loses at most one block).")
    rows_per_file: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _pool_fits(self) -> AugmentConfig:
        samples = self.num_samples
        if samples <= self.n_fft // 2:  # torch's centred STFT pads n_fft/2 by reflection: every block failed
            raise ValueError(
                f"duration {self.duration:g} s is {samples} samples at sample_rate {self.sample_rate}: the "
                f"spectrogram needs more than n_fft / 2 ({self.n_fft // 2})"
            )
        if self.hop_length > self.n_fft:
            raise ValueError(
                f"hop_length ({self.hop_length}) exceeds n_fft ({self.n_fft}): the samples between frames would "
                "be in no view"
            )
        self.choices()  # raises a ValueError naming the problem (too many augs, min above max)
        if problem := mel_problem(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max):
            raise ValueError(problem)
        return self

    @property
    def num_samples(self) -> int:
        """Samples per crop."""
        return int(round(self.duration * self.sample_rate))

    def choices(self) -> AugmentationChoices:
        """What the views draw from, sized as the stage sizes its crops and spectrograms."""
        num_samples = self.num_samples
        return AugmentationChoices(
            self.waveform_pool,
            self.spectrogram_pool,
            self.num_waveform_augs,
            self.num_spectrogram_augs,
            self.sample_rate,
            num_samples,
            self.n_mels,
            1 + num_samples // self.hop_length,  # LogMelSpectrogram.frames
        )


class CropPlan:
    """Where each version's crop starts (uniform over the file, drawn from (seed, key, version)),
    and its two views' augmentation parameters (column ``view_draws``, drawn here in the decode
    tasks: the one actor feeding a GPU spent as long drawing them as applying them)."""

    def __init__(self, seed: int, num_versions: int, duration: float, choices: AugmentationChoices):
        self.seed, self.num_versions, self.duration = seed, num_versions, duration
        self.choices = choices

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        room = max(0.0, file_seconds - self.duration)
        return [
            Window(
                v,
                float(sample_rng(self.seed, key, v, "crop").random() * room),
                {DRAWS_COLUMN: self.choices.draw_views(self.seed, key, v)},
            )
            for v in range(self.num_versions)
        ]


class SplitOf:
    def __init__(self, seed: int, val_fraction: float):
        self.seed, self.val_fraction = seed, val_fraction

    def __call__(self, key: str) -> str:
        return train_val_split(self.seed, key, self.val_fraction)


class AugmentJob(Job):
    name = "augment"
    config_model = AugmentConfig
    index_column = "version"
    rows_label = "rows"
    # 8 clips of decoded crops (about 10 MB) stay in cache between decode and augment:
    # 10 % more views per CPU-second than a whole 32-clip block at once.
    decode_chunk = 8

    @property
    def output_columns(self) -> list[str]:
        return ["key", "version", "view1", "view2", "source"]

    def fingerprint_extra(self) -> dict[str, Any]:
        # Outputs whose masks could cover a whole axis (fewer mel bins or frames than a mask's max_width)
        # were written with some constant views: refused rather than mixed with the capped ones.
        return {"masks_below_axis": True} if self.config.choices().masks_capped() else {}

    def decoder(self) -> WindowDecoder:
        c = self.config
        return WindowDecoder(
            plan=CropPlan(c.seed, c.num_versions, c.duration, c.choices()),
            sample_rate=c.sample_rate,
            duration=c.duration,
            index_column="version",
            split_of=SplitOf(c.seed, c.val_fraction),
            min_duration=c.min_duration,
            silence_db=c.silence_db,
            storage_options=c.storage_options,
            valid_column=VALID_COLUMN,  # a short clip's audio frames: the stage keeps one out of the time mask
        )

    def stage_kwargs(self) -> dict:
        c = self.config
        return dict(
            seed=c.seed,
            sample_rate=c.sample_rate,
            duration=c.duration,
            n_mels=c.n_mels,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            top_db=c.top_db,
            num_waveform_augs=c.num_waveform_augs,
            num_spectrogram_augs=c.num_spectrogram_augs,
            waveform_pool=c.waveform_pool.model_dump(),
            spectrogram_pool=c.spectrogram_pool.model_dump(),
            dtype=c.dtype,
        )

    def stages(self) -> list[StageSpec]:
        return [StageSpec(AUGMENT_STAGE, self.stage_kwargs())]

    def throughput_units(self, rows: int) -> dict[str, float]:
        return {"views": 2.0 * rows}


JOB = AugmentJob


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    return run_job_command("augment", argv)  # None: this process's command line


if __name__ == "__main__":
    sys.exit(main())
