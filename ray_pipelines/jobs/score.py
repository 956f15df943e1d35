"""The score job: quality scores per item and outlier filters for a dataset.

Per item, the columns of the configured scorers (``scorers``; docs/score.md):
``dnsmos`` (pretrained DNSMOS P.835 SIG/BAK/OVRL and P.808), ``vad`` (Silero
VAD speech fraction), ``signal`` (levels, clipping, DC, silence, bandwidth,
WADA-SNR) -- the default on audio -- and ``reconstruction`` (the user's model's
reconstruction loss and the mel energy; the default on spectrogram inputs).
Inputs: audio files, a ``{split}/{class}/*.pt`` folder of mel tensors, or
another job's Parquet shards. Writes the scores (Parquet + scores.csv),
per-split summaries, plots, and the filter outputs (filter.json, kept.txt,
ignored.txt, decisions.csv, groups.csv).

    ray-pipelines score --config score
"""

from __future__ import annotations

import logging
import re
import sys
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ray_pipelines import isolated
from ray_pipelines.config import Codec, CommonConfig, ConfigError, LevelDb, Seconds
from ray_pipelines.engine.decode import WindowDecoder
from ray_pipelines.engine.job import Job, StageSpec
from ray_pipelines.mel_bands import mel_problem
from ray_pipelines.model_files import ModelUnreachable
from ray_pipelines.scoring import scorers as builtin
from ray_pipelines.scoring.inputs import (
    INDEX_COLUMN,
    FirstWindow,
    PathLabels,
    ShardDecoder,
    TensorFileDecoder,
    list_shard_inputs,
    list_tensor_files,
)
from ray_pipelines.scoring.options import DnsmosOptions, ModelSpec, VadOptions
from ray_pipelines.scoring.report import (
    FilterSettings,
    check_predictions_readable,
    filter_warnings,
    format_filter_report,
    write_filter_outputs,
    write_summaries,
)
from ray_pipelines.scoring.signal_stats import SignalOptions
from ray_pipelines.scoring.table import ScoreTable, read_errors
from ray_pipelines.sources import InputItem
from ray_pipelines.storage import Storage

log = logging.getLogger(__name__)

# Windows shorter than this get the DNSMOS segments speechmos gives (ray_pipelines.scoring.dnsmos.segments):
# its first dropped segment starts at 7 s, and a clip has one there from 17 s on.
DNSMOS_EXACT_SECONDS = 17.0
# Imported in the actors only (the stage imports torch; the driver never does).
SCORE_STAGE = "ray_pipelines.stages.score:ScoreStage"


class MelNormalize(BaseModel):
    """``(mel - mean) / std`` before scoring (e.g. dB log-mels to roughly unit scale)."""

    model_config = ConfigDict(extra="forbid")
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class ScoreConfig(CommonConfig):
    source: Literal["audio", "pt", "shards"] = Field(
        "audio", description="audio files; .pt mel tensors; or another job's committed Parquet output."
    )
    tensor_column: str = Field("view1", description="shards: the [1, n_mels, T] tensor column to score.")
    shard_index_column: str | None = Field(
        None, description="shards: the source's per-input sample column (default: version/window/snippet/index)."
    )
    shard_splits: list[str] | None = Field(None, description="shards: only these splits (default all).")
    split_pattern: str | None = Field(
        r"^([^/]+)/",
        description="Regex, one group, over the key: the split. null: the shard's split "
        "(shards), else a hash split by val_fraction.",
    )
    class_pattern: str | None = Field(r"^[^/]+/([^/]+)/", description="Regex, one group: the class label.")
    group_pattern: str | None = Field(None, description="Regex, one group: the group (e.g. a patient id).")
    val_fraction: float = Field(0.0, ge=0, le=1, description="Hash split share of 'val' when split_pattern is null.")

    # the scorers and their settings
    scorers: list[builtin.ScorerName] | None = Field(
        None,
        description="Scorers to run, in order: dnsmos, vad, signal, reconstruction. "
        "Default: dnsmos, vad, signal on audio; reconstruction on pt/shards (spectrogram) inputs.",
    )
    dnsmos: DnsmosOptions = Field(default_factory=DnsmosOptions)
    vad: VadOptions = Field(default_factory=VadOptions)
    signal: SignalOptions = Field(default_factory=SignalOptions)

    # the spectrogram: computed from audio, or the shape tensor inputs must have
    sample_rate: int = Field(22050, gt=0)
    n_mels: int = Field(128, gt=0)
    duration: float = Field(3.0, gt=0, description="audio: seconds scored per file (zero-padded).")
    offset: float = Field(
        0.0,
        ge=0,
        description="audio: seconds skipped at the start of each file (a file that ends before it: an error row).",
    )
    frames: int | None = Field(
        None,
        gt=0,
        description="Mel frames; default 1 + duration*sample_rate // hop_length. audio: always that "
        "(another value is refused); pt/shards: the tensors' T.",
    )
    n_fft: int = Field(2048, gt=0)
    hop_length: int = Field(512, gt=0)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = None
    top_db: float | None = Field(80.0, gt=0)
    min_duration: Seconds = Field(0.05, description="audio: shorter files become error rows.")
    silence_db: LevelDb | None = Field(
        None,
        description="audio: windows quieter than this (dBFS) become error rows; "
        "null scores them (the energy filter judges them).",
    )
    normalize: MelNormalize | None = None

    # the reconstruction scorer's model
    model: ModelSpec = Field(default_factory=ModelSpec)
    mask_ratio: float = Field(0.0, ge=0, lt=1, description="Share of patches hidden from the model (MAE).")
    mask_patch: tuple[PositiveInt, PositiveInt] = Field((16, 16), description="Mask patch size (mel bins, frames).")
    forward_batch: int | None = Field(
        None,
        ge=1,
        description="Rows per model forward, padded to exactly this (scores' bytes depend on it). "
        "Default 16 on CPU, 64 on CUDA.",
    )

    # derived outputs; changing them re-derives the outputs without recomputing scores
    filter: FilterSettings = Field(default_factory=FilterSettings)

    batch_size: int = Field(64, ge=1)
    inputs_per_block: int = Field(256, ge=1)
    rows_per_file: int = Field(65536, ge=1)
    compression: Codec = Field(
        "lz4",
        description="Parquet codec of the score shards: a row of scalar scores per item, small with any codec "
        "(scores.csv and the reports are written from them at the end).",
    )

    RUNTIME_FIELDS = CommonConfig.RUNTIME_FIELDS | {"filter"}

    @field_validator("split_pattern", "class_pattern", "group_pattern")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one capture group, {value!r} has {groups}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _filter_rules_name_scores(cls, data: Any) -> Any:
        """A filter rule for a score no scorer makes is refused before the rule's own keys are checked:
        ``--set filter.speech_fractio.bounds=[0.5, null]`` mistypes a score's name, which would else be
        told as a problem of the new rule it makes (it names no mode)."""
        if not isinstance(data, dict) or not isinstance(data.get("filter"), dict):
            return data
        source_field = cls.model_fields["source"]
        scorers, source = data.get("scorers"), data.get("source", source_field.default)
        named = scorers is None or (isinstance(scorers, list) and all(s in builtin.COLUMNS for s in map(str, scorers)))
        if source not in typing.get_args(source_field.annotation) or not named:
            return data  # their own errors are told where they are checked
        FilterSettings.check_section_names(
            data["filter"], builtin.score_columns(builtin.configured_scorers(scorers, source))
        )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ScoreConfig:
        names = self.scorer_names
        spectrogram = self.source == "audio" and "reconstruction" in names  # else the inputs are spectrograms
        if spectrogram and (problem := mel_problem(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)):
            raise ValueError(problem)
        if self.source == "audio" and self.frames is not None and self.frames != self.audio_frames:
            # The log-mel of a window has exactly this many frames: masks or a model shape check of another
            # T failed every row ("size of tensor a (72) must match (160)") and the run still exited 0.
            raise ValueError(
                f"frames: {self.frames} does not fit source audio: a {self.duration:g} s window at "
                f"{self.sample_rate} Hz with hop_length {self.hop_length} gives {self.audio_frames} mel frames; "
                f"leave frames unset (null) or set it to {self.audio_frames}"
            )
        if self.source == "shards" and len(self.inputs()) != 1:
            raise ValueError("source shards takes one input: the root of a committed job output")
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"scorers: each at most once, at least one (got {names})")
        if self.source != "audio" and (audio_only := [n for n in names if n in builtin.AUDIO_ONLY]):
            raise ValueError(
                f"scorers {', '.join(audio_only)} need audio (source: audio); {self.source} inputs hold "
                "spectrograms: use scorers: [reconstruction]"
            )
        if "model" in self.model_fields_set and "reconstruction" not in names:
            raise ValueError("model is set but scorers does not include reconstruction (the scorer that uses it)")
        self.filter.rules(self.score_columns)  # a rule or scatter naming a score no scorer makes
        return self

    @property
    def scorer_names(self) -> list[str]:
        return builtin.configured_scorers(self.scorers, self.source)

    @property
    def score_columns(self) -> list[str]:
        return builtin.score_columns(self.scorer_names)

    @property
    def shortest_clip(self) -> int:
        """audio: the fewest real samples a scored clip can have (shorter files are error rows)."""
        return int(min(self.min_duration, self.duration) * self.sample_rate)

    @property
    def audio_frames(self) -> int:
        """Frames of the log-mel of a ``duration`` window (centred STFT: 1 + samples // hop_length)."""
        return 1 + int(round(self.duration * self.sample_rate)) // self.hop_length

    @property
    def mel_frames(self) -> int:
        return self.frames or self.audio_frames


class ScoreJob(Job):
    name = "score"
    config_model = ScoreConfig
    index_column = INDEX_COLUMN
    rows_label = "items"

    def __init__(self, config: ScoreConfig):
        super().__init__(config)
        self._model_fingerprint: dict[str, Any] | None = None

    @property
    def output_columns(self) -> list[str]:
        return ["key", "item", "split", "class", "group", *self.config.score_columns, "source"]

    # ---- planning ------------------------------------------------------------------------------
    def path_labels(self) -> PathLabels:
        c = self.config
        return PathLabels(c.split_pattern, c.class_pattern, c.group_pattern, c.seed, c.val_fraction)

    def list_inputs(self) -> list[InputItem]:
        c = self.config
        if c.source == "audio":
            return self.path_labels().label(super().list_inputs())
        if c.source == "pt":
            return self.path_labels().label(list_tensor_files(c.inputs(), c.storage_options, c.allow_empty))
        items, shard_splits = list_shard_inputs(
            c.inputs()[0], c.tensor_column, c.shard_index_column, c.shard_splits, c.storage_options
        )
        return self.path_labels().label(items, shard_splits)

    def fingerprint_extra(self) -> dict[str, Any]:
        """The scorers that run and the digests of their models' weights.

        Hashing the built-in models' files also checks their packages are installed; loading the
        user's model here checks it maps the mel shape to itself. Building the model takes torch,
        so that runs in a child process (``ray_pipelines.isolated``): the driver never imports torch.
        """
        if self._model_fingerprint is None:
            c = self.config
            check_predictions_readable(c.filter.predictions, c.storage_options)  # before anything is written
            extra: dict[str, Any] = {
                "scorers": c.scorer_names,
                "model_files_sha256": builtin.model_digests(c.scorer_names),
            }
            if c.source == "audio" and c.offset > 0:
                # Since 2026-12-06 a short file's window starts at offset too (FirstWindow): outputs scored
                # before, with the window moved earlier, are refused rather than mixed with new rows.
                extra["window_from_offset"] = True
            if c.source == "audio" and "signal" in c.scorer_names and c.shortest_clip <= c.signal.n_fft:
                # Since 2026-12-07 a clip shorter than signal.n_fft has its bandwidth from a window of its own
                # length (the n_fft window over the clip and its zero padding read about the Nyquist
                # frequency): outputs where such clips can be are refused rather than mixed with new rows.
                extra["bandwidth_short_clips"] = True
            if c.source == "audio" and "dnsmos" in c.scorer_names and c.duration >= DNSMOS_EXACT_SECONDS:
                # Since 2026-12-07 DNSMOS scores every segment of a clip of 17 s or more (speechmos's float
                # arithmetic dropped those starting at 7-23 s and 119-122 s): such outputs are refused, not mixed.
                extra["dnsmos_every_segment"] = True
            if "reconstruction" in c.scorer_names:
                try:
                    digests = isolated.call(
                        "ray_pipelines.scoring.models:model_digests",
                        model=c.model.model_dump(mode="json"),
                        n_mels=c.n_mels,
                        frames=c.mel_frames,
                        masked=c.mask_ratio > 0,
                        storage_options=c.storage_options,
                    )
                except ModelUnreachable as e:  # a download or file the network did not deliver: exit 1
                    raise ModelUnreachable(f"model ({c.model.kind}): {e}") from None
                except ConfigError as e:  # already says what is wrong (e.g. model file not found)
                    raise ConfigError(f"model ({c.model.kind}): {e}") from None
                except isolated.ChildProcessFailed as e:  # killed (out of memory), not the config: exit 1
                    raise isolated.ChildProcessFailed(f"model ({c.model.kind}): {e}") from None
                except Exception as e:
                    raise ConfigError(f"model ({c.model.kind}): {type(e).__name__}: {e}") from None
                extra["model_weights_sha256"] = digests["weights"]
                if digests["code"]:  # a factory's files or a TorchScript file (the reference model: none)
                    extra["model_code_sha256"] = digests["code"]
            self._model_fingerprint = extra
        return self._model_fingerprint

    # ---- per-row work ----------------------------------------------------------------------------
    def decoder(self):
        c = self.config
        if c.source == "audio":
            return WindowDecoder(
                plan=FirstWindow(c.offset, c.duration, c.min_duration),
                sample_rate=c.sample_rate,
                duration=c.duration,
                index_column=INDEX_COLUMN,
                min_duration=c.min_duration,
                silence_db=c.silence_db,
                storage_options=c.storage_options,
                passthrough=("class", "group"),
                valid_column="valid",  # the waveform scorers score a short file's real samples only
            )
        if c.source == "pt":
            return TensorFileDecoder(n_mels=c.n_mels, frames=c.mel_frames, storage_options=c.storage_options)
        return ShardDecoder(
            root=c.inputs()[0],
            column=c.tensor_column,
            n_mels=c.n_mels,
            frames=c.mel_frames,
            storage_options=c.storage_options,
        )

    def reconstruction_kwargs(self) -> dict[str, Any]:
        c = self.config
        spectrogram = None
        if c.source == "audio":
            spectrogram = dict(
                sample_rate=c.sample_rate,
                n_fft=c.n_fft,
                hop_length=c.hop_length,
                n_mels=c.n_mels,
                f_min=c.f_min,
                f_max=c.f_max,
                top_db=c.top_db,
            )
        return dict(
            model=c.model.model_dump(mode="json"),
            n_mels=c.n_mels,
            frames=c.mel_frames,
            seed=c.seed,
            mask_ratio=c.mask_ratio,
            mask_patch=tuple(c.mask_patch),
            spectrogram=spectrogram,
            normalize=c.normalize.model_dump() if c.normalize else None,
            storage_options=c.storage_options,
        )

    def stage_kwargs(self) -> dict[str, Any]:
        c = self.config
        options = {
            "dnsmos": lambda: c.dnsmos.model_dump(),
            "vad": lambda: c.vad.model_dump(),
            "signal": lambda: c.signal.model_dump(),
            "reconstruction": self.reconstruction_kwargs,
        }
        return dict(
            scorers={name: options[name]() for name in c.scorer_names},
            sample_rate=c.sample_rate if c.source == "audio" else None,
            forward_batch=c.forward_batch,
        )

    def stages(self) -> list[StageSpec]:
        gpu = any(name in builtin.USES_GPU for name in self.config.scorer_names)
        return [StageSpec(SCORE_STAGE, self.stage_kwargs(), batch_size=self.config.batch_size, gpu=gpu)]

    # ---- outputs ---------------------------------------------------------------------------------
    def after_commit(self, storage: Storage, manifest: dict[str, Any]) -> dict[str, Any]:
        """The dataset card, then scores.csv, summaries and the filter outputs, from the committed Parquet scores."""
        super().after_commit(storage, manifest)
        c = self.config
        table = ScoreTable.from_output(storage.root, c.storage_options, manifest)
        storage.write_bytes("scores.csv", table.to_csv().encode())
        summaries = write_summaries(storage, table, c.filter.histogram_bins)
        splits = table["split"].astype(str)
        if problem := c.filter.train_split_problem(splits, table.scores):
            rerun = f"ray-pipelines filter {storage.root} "
            log.warning("score: filter.%s", c.filter.keeps_everything(problem, splits, rerun))
        report = write_filter_outputs(
            storage,
            table,
            c.filter,
            read_errors(storage.root, c.storage_options),
            scores_from=storage.root,
            storage_options=c.storage_options,
        )
        log.info("%s", format_filter_report(report))
        for warning in filter_warnings(report):
            log.warning("score: %s", warning)
        # The two reports for callers (JobResult.extra); the summary shows the short lines only.
        keys = report["keys"]
        return {
            "summaries": summaries,
            "filter": report,
            "kept": f"{keys['kept']} inputs ({keys['ignored']} ignored, {keys['errors']} of them errors): kept.txt",
            "scores": "scores.csv, summary.json, filter.json, decisions.csv",
        }


JOB = ScoreJob


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    return run_job_command("score", argv)  # None: this process's command line


if __name__ == "__main__":
    sys.exit(main())
