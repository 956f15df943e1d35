"""The encode job: pre-encode audio into autoencoder latents or tokens.

The Ray version of stable-audio-tools' ``pre_encode.py``: each input (or each
consecutive window of it, ``windows: all``) is padded or cropped to
``sample_size`` samples, encoded by the configured model in an actor pool
(GPU when present, fp16/bf16), and written as ``{output}/{rank}/{id}.npy`` +
``.json`` (what stable-audio-tools' pre-encoded dataset reads), Parquet
shards, or both; with the engine's manifests, resume and error rows.

    ray-pipelines encode --config encode
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ray_pipelines import isolated
from ray_pipelines.config import Codec, CommonConfig, LevelDb, Seconds
from ray_pipelines.encoders.config import ModelConfig
from ray_pipelines.encoders.info import ModelInfo
from ray_pipelines.encoders.sat_sink import DETAILS, SatSink, id_collisions, is_encode_data_file, write_filelist
from ray_pipelines.encoders.windows import EncodeDecoder, WindowPlan
from ray_pipelines.engine.decode import WindowDecoder
from ray_pipelines.engine.job import Job, StageSpec
from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES, ShardSink
from ray_pipelines.seeding import unit_interval
from ray_pipelines.sources import InputItem
from ray_pipelines.storage import Storage

log = logging.getLogger(__name__)

# Imported in the actors only (the stage imports torch; the driver never does).
ENCODE_STAGE = "ray_pipelines.stages.encode:EncodeStage"
# The columns of every window's row, in the files' order (the SAT layout's .json holds the metadata ones).
OUTPUT_COLUMNS = (
    "key",
    "window",
    "latents",
    "padding_mask",
    "seconds_start",
    "seconds_total",
    "timestamps",
    "sample_rate",
    "path",
    "relpath",
    "start_seconds",
    "valid_samples",
)


class EncodeConfig(CommonConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    # pre_encode.py's options, names and defaults
    batch_size: int = Field(1, ge=1, description="Windows per model call (on CUDA; CPU encodes one at a time).")
    sample_size: int = Field(1320960, ge=1, description="Samples per window: audio is padded or cropped to it.")
    sample_rate: int | None = Field(
        None, gt=0, description="Default: the model's. Set only for models that do not declare it."
    )
    audio_channels: int | None = Field(None, ge=1, description="Default: the model's.")
    model_half: bool = Field(False, description="Run the model in fp16 and store float16 latents.")
    bf16: bool = Field(False, description="Run the model in bf16 (latents stored as float32).")
    is_discrete: bool = Field(
        False, description="The model returns integer tokens ([B, Q, N], [B, N, Q] or [B, N]; stored [Q, N])."
    )
    limit_batches: int | None = Field(None, ge=1, description="Encode at most limit_batches * batch_size inputs.")
    shuffle: bool = Field(
        False, description="Which inputs limit/limit_batches keep: a seeded random subset instead of the first keys."
    )
    # this job's own
    windows: Literal["first", "all"] = Field(
        "first",
        description="first: one window from the start of each file; all: consecutive windows "
        "covering the whole file, the last one padded.",
    )
    layout: Literal["sat", "parquet", "both"] = "sat"
    compression: Codec = Field(
        "none",
        description="Parquet codec (layouts parquet and both). Latents barely compress (lz4 leaves 0.92 of "
        "the bytes): uncompressed, the readers spend about a sixth less CPU per item.",
    )
    sample_posterior: bool = Field(
        True, description="VAEs: sample the posterior with noise seeded per (seed, key, window); false: take its mean."
    )
    min_duration: Seconds = Field(0.0, description="Shorter inputs become error rows.")
    silence_db: LevelDb | None = Field(
        None,
        description="A window whose peak is below this (dBFS) is an error row; null keeps silent windows "
        "(pre_encode drops those below -60 dBFS, each replaced by a random other file: -60 matches it).",
    )
    clamp: bool = Field(
        False, description="Clamp the audio to [-1, 1] before the model, as stable-audio-tools' pre_encode does."
    )
    rows_per_file: int = Field(512, ge=1)

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = CommonConfig.RUNTIME_FIELDS | {"limit_batches", "shuffle"}

    @model_validator(mode="after")
    def _one_precision(self) -> EncodeConfig:
        if self.model_half and self.bf16:
            raise ValueError("model_half (fp16) and bf16 are exclusive; choose one")
        return self

    @property
    def precision(self) -> str:
        return "fp16" if self.model_half else "bf16" if self.bf16 else "fp32"

    def fingerprinted(self) -> dict[str, Any]:
        data = super().fingerprinted()
        if not self.clamp:
            data.pop("clamp")  # outputs written before the key existed were unclamped: they keep their fingerprint
        return data


class EncodeJob(Job):
    name = "encode"
    config_model = EncodeConfig
    index_column = "window"
    row_group_bytes = WHOLE_READ_ROW_GROUP_BYTES
    rows_label = "clips"

    def __init__(self, config: EncodeConfig):
        super().__init__(config)
        # Load and probe the model before Ray starts: a wrong path, a missing optional package or a
        # continuous/discrete mismatch stops the job here. That takes torch, so it runs in a child
        # process (ray_pipelines.isolated): the driver never imports torch.
        probed = isolated.call(
            "ray_pipelines.encoders.loading:probe_encoder",
            model=config.model.model_dump(mode="json"),
            sample_rate=config.sample_rate,
            channels=config.audio_channels,
            is_discrete=config.is_discrete,
            storage_options=config.storage_options,
            sample_size=config.sample_size,
            precision=config.precision,
        )
        self.model = ModelInfo(**probed)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def output_columns(self) -> list[str]:
        return list(OUTPUT_COLUMNS)

    # ---- planning -----------------------------------------------------------------
    def pick_inputs(self, items: list[InputItem]) -> list[InputItem]:
        """With ``limit_batches`` only the first (or, ``shuffle``, a seeded random)
        ``limit_batches * batch_size`` of the inputs the keep/ignore lists allow."""
        c = self.config
        if c.shuffle:
            items = sorted(items, key=lambda i: unit_interval(c.seed, "shuffle", i.key))
        budget = [n for n in (c.limit, c.limit_batches * c.batch_size if c.limit_batches else None) if n]
        if budget:
            items = items[: min(budget)]  # the engine then sorts by key and applies limit again
        return items

    def fingerprint_extra(self) -> dict[str, Any]:
        code = {"model_code_sha256": self.model.code_sha256} if self.model.code_sha256 else {}
        # Since 2026-12-07 a mono model gets the channels' mean (it got the left one): outputs encoded
        # before are refused rather than mixed with new rows.
        mono = {"mono_from": "mean"} if self.model.channels == 1 else {}
        return {"model_weights_sha256": self.model.weights_sha256, **code, **mono}

    def decoder(self) -> WindowDecoder:
        c = self.config
        return EncodeDecoder(
            plan=WindowPlan(c.windows, c.sample_size, self.sample_rate),
            sample_rate=self.sample_rate,
            duration=c.sample_size / self.sample_rate,
            index_column="window",
            channels=self.model.channels,
            min_duration=c.min_duration,
            silence_db=c.silence_db,
            storage_options=c.storage_options,
            valid_column="valid_samples",
        )

    def stage_kwargs(self) -> dict[str, Any]:
        c = self.config
        return dict(
            model=c.model.model_dump(mode="json"),
            sample_size=c.sample_size,
            seed=c.seed,
            sample_rate=c.sample_rate,
            audio_channels=c.audio_channels,
            is_discrete=c.is_discrete,
            sample_posterior=c.sample_posterior,
            clamp=c.clamp,
            precision=c.precision,
            batch_size=c.batch_size,
            frames_axis=self.model.frames_axis,
            storage_options=c.storage_options,
            weights_sha256=self.model.weights_sha256,
        )

    def stages(self) -> list[StageSpec]:
        return [StageSpec(ENCODE_STAGE, self.stage_kwargs(), gpu=True)]

    # ---- output -------------------------------------------------------------------
    def schema_metadata(self) -> dict[str, str]:
        m = self.model
        return {
            "ray_pipelines.encode.model": json.dumps(
                {
                    "sample_rate": m.sample_rate,
                    "channels": m.channels,
                    "downsampling_ratio": m.downsampling_ratio,
                    "is_discrete": m.is_discrete,
                    "latent_shape": [m.latent_channels, m.latent_frames],
                    "codebook_size": m.codebook_size,
                    "dtype": m.stored_dtype,
                    "weights_sha256": m.weights_sha256,
                    **({"code_sha256": m.code_sha256} if m.code_sha256 else {}),
                },
                sort_keys=True,
            )
        }

    def make_sink(self, fingerprint: str) -> ShardSink:
        options, layout = self.sink_options(fingerprint), self.config.layout
        if layout == "parquet":
            return ShardSink(**options)
        return SatSink(write_parquet=layout == "both", **options)

    def is_data_file(self, relpath: str) -> bool:
        return is_encode_data_file(relpath)

    def writes_parquet(self) -> bool:
        return self.config.layout != "sat"

    def after_commit(self, storage: Storage, manifest: dict[str, Any]) -> dict[str, Any]:
        """The dataset card of the Parquet layout, ``filelist.txt`` (from every committed manifest) and
        ``details.json``."""
        super().after_commit(storage, manifest)
        c = self.config
        files = manifest.get("files", [])
        collisions = id_collisions(files)
        for collision in collisions:
            log.warning("encode: two windows drew the same sample id %s: %s", collision["id"], collision["samples"])
        samples = write_filelist(storage, files) if c.layout != "parquet" else []
        config = c.recorded()  # a presigned input's signature left out
        storage.write_json(
            DETAILS,
            {
                # the keys pre_encode.py writes
                "model_config": self.model.description.get("model_config", self.model.description),
                "dataset_config": {"input": config["input"], "windows": c.windows},
                "sample_size": c.sample_size,
                "args": config,
                # and what this job adds
                "model": {k: v for k, v in self.model.as_dict().items() if k != "description"},
                "config": config,
                "fingerprint": manifest.get("fingerprint"),
                "layout": c.layout,
                "samples": len(samples) if c.layout != "parquet" else manifest["counts"]["rows_written"],
                "id_collisions": collisions,
            },
        )
        return {
            "samples in filelist.txt": len(samples) if c.layout != "parquet" else "-",
            "sample id collisions": len(collisions),
        }

    def throughput_units(self, rows: int) -> dict[str, float]:
        # windows of sample_size, a short clip's padding included (not the audio it held)
        return {"window seconds": rows * self.config.sample_size / self.sample_rate}


JOB = EncodeJob
__all__ = ["JOB", "EncodeConfig", "EncodeDecoder", "EncodeJob", "WindowPlan", "main"]


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    return run_job_command("encode", argv)  # None: this process's command line


if __name__ == "__main__":
    sys.exit(main())
