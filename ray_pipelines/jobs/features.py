"""The features job: a labelled AST spectrogram dataset from a music library.

The library's top-level folders are the labels. Songs are split by song,
stratified by label (``splits.json``); each song gives ``snippets_per_song``
snippets of ``snippet_seconds`` (at the seed notebook's positions, or spread
over the song: ``snippet_rule``), and each snippet the AST feature extractor's
``input_values [max_length, n_mels]``. Output: ``{output}/<split>/part-*.parquet``
with a Hugging Face dataset card (``load_dataset(output)``, ``label`` a
ClassLabel), ``labels.json``, ``splits.json`` and the class-balance report
``balance.json`` / ``balance.png``. See docs/features.md.

    ray-pipelines features --config features
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ray_pipelines.config import Codec, CommonConfig, LevelDb, Seconds
from ray_pipelines.engine.decode import Window, WindowDecoder
from ray_pipelines.engine.job import Job, StageSpec
from ray_pipelines.engine.manifest import OutputState
from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES
from ray_pipelines.features.catalog import LibraryPlan, describe, plan_library, read_memory, save_plan
from ray_pipelines.features.frames import AST_MEAN, AST_SAMPLE_RATE, AST_STD, frame_sizes
from ray_pipelines.features.library import lookalike_labels
from ray_pipelines.features.report import balance_chart, balance_report
from ray_pipelines.features.split import DEFAULT_SPLITS
from ray_pipelines.sources import InputItem, SourceError
from ray_pipelines.storage import Storage, split_protocol

log = logging.getLogger(__name__)

# Imported in the actors only (the stage imports torch; the driver never does).
FEATURES_STAGE = "ray_pipelines.stages.features:FeaturesStage"

BALANCE_JSON = "balance.json"
BALANCE_PNG = "balance.png"
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Why a file whose path leads above the root (a list file's `../` line) has no label.
ABOVE_ROOT = (
    "above the folder their paths are read from: a list file's lines are read from the list file's folder, "
    "whose first folders are the labels, and a line going above it (../) has none; put the list file in the "
    "folder that holds the label folders"
)


class FeaturesConfig(CommonConfig):
    skip_dirs: list[str] = Field(
        default_factory=lambda: ["__MACOSX", ".*"], description="Folder names (fnmatch patterns) skipped at any depth."
    )
    min_per_label: int = Field(6, ge=1, description="Labels with fewer songs are dropped (and reported).")
    splits: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SPLITS), description="Split name -> fraction of each label's songs."
    )
    snippets_per_song: int = Field(6, ge=1)
    snippet_seconds: float = Field(10.24, gt=0, description="Snippet length (features of a shorter one are padded).")
    snippet_rule: Literal["seed", "spread"] = Field(
        "seed",
        description="seed: the seed notebook's snippets, k * (length // snippets_per_song) samples into the "
        "16 kHz song, for every song; spread: from the start to the end of the song, one for a short song.",
    )
    sample_rate: int = Field(AST_SAMPLE_RATE, gt=0, description="AST models expect 16000.")
    n_mels: int = Field(128, gt=3)
    max_length: int = Field(1024, ge=1, description="Frames per snippet after padding or cropping.")
    normalize: bool = Field(True, description="(x - mean) / (2 * std), as ASTFeatureExtractor's do_normalize.")
    mean: float = AST_MEAN
    std: float = Field(AST_STD, gt=0)
    min_duration: Seconds = Field(0.025, description="Songs shorter than this (one 25 ms frame) are error rows.")
    silence_db: LevelDb | None = Field(
        None, description="Snippets whose peak is below this (dBFS) become error rows; null keeps silent snippets."
    )
    batch_size: int = Field(16, ge=1)
    inputs_per_block: int = Field(16, ge=1, description="Songs per decode block (x snippets_per_song rows).")
    rows_per_file: int = Field(256, ge=1, description="A snippet is max_length * n_mels * 4 bytes (512 KiB).")
    compression: Codec = Field(
        "none",
        description="Parquet codec. Features are noisy floats that barely compress (lz4 leaves 0.84 of the "
        "bytes, zstd level 1 0.80): uncompressed, the readers spend about a third less CPU per snippet.",
    )

    @field_validator("splits")
    @classmethod
    def _valid_splits(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one split")
        bad = [name for name in value if not SPLIT_NAME.match(name)]
        if bad:
            raise ValueError(f"split names become folder names; use letters, digits, '-' and '_' ({bad})")
        if any(fraction < 0 for fraction in value.values()):
            raise ValueError("split fractions must not be negative")
        if abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, they sum to {sum(value.values()):g}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeaturesConfig:
        used = sum(1 for fraction in self.splits.values() if fraction > 0)
        if self.min_per_label < used:
            raise ValueError(
                f"min_per_label ({self.min_per_label}) must be at least the number of splits "
                f"({used}) so every kept label can have a song in each"
            )
        size, _, _ = frame_sizes(self.sample_rate)
        if round(self.snippet_seconds * self.sample_rate) < size:
            raise ValueError(f"snippet_seconds ({self.snippet_seconds}) is shorter than one 25 ms frame")
        return self


class SeedSnippets:
    """The seed notebook's snippets (its loop ``range(0, len - len % S, len // S)``): snippet k of
    S starts ``k * (len // S)`` samples into the song at ``sample_rate`` (``len`` its length
    there, as ``librosa.load(sr=...)`` returns it), whatever the song's length. A snippet past the
    end holds what is left of the song and its features are padded, as the extractor does."""

    def __init__(self, snippets_per_song: int, snippet_seconds: float, sample_rate: int):
        self.count, self.seconds, self.rate = snippets_per_song, snippet_seconds, sample_rate

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        # ceil(frames * rate / native rate); the exact value is a multiple of 1 / native rate
        # (over 2.6e-6 below 384 kHz), so the 1e-6 only absorbs the float rounding of file_seconds.
        length = math.ceil(file_seconds * self.rate - 1e-6)
        step = max(1, length // self.count)
        return [Window(k, k * step / self.rate) for k in range(min(self.count, length))]


class SpreadSnippets:
    """``snippets_per_song`` windows spread evenly: the first at the start, the last ending at
    the end of the song (one window: centred). A song no longer than one snippet gives one
    snippet at 0, zero-padded."""

    def __init__(self, snippets_per_song: int, snippet_seconds: float):
        self.count, self.seconds = snippets_per_song, snippet_seconds

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        room = file_seconds - self.seconds
        if room <= 0:
            return [Window(0, 0.0)]
        if self.count == 1:
            return [Window(0, room / 2)]
        return [Window(i, room * i / (self.count - 1)) for i in range(self.count)]


def snippet_plan(config: FeaturesConfig) -> SeedSnippets | SpreadSnippets:
    c = config
    if c.snippet_rule == "seed":
        return SeedSnippets(c.snippets_per_song, c.snippet_seconds, c.sample_rate)
    return SpreadSnippets(c.snippets_per_song, c.snippet_seconds)


class FeaturesJob(Job):
    name = "features"
    config_model = FeaturesConfig
    index_column = "snippet"
    row_group_bytes = WHOLE_READ_ROW_GROUP_BYTES
    key_column = "path"  # the song's key (the data has no separate key column)
    rows_label = "snippets"
    decode_chunk = 2  # songs decoded then featurised together: 12 snippets, about 8 MB of audio

    def __init__(self, config: FeaturesConfig):
        super().__init__(config)
        self.plan: LibraryPlan | None = None

    @property
    def output_columns(self) -> list[str]:
        return ["input_values", "label", "path", "snippet", "start_seconds"]

    def storage(self) -> Storage:
        return Storage(self.config.output, self.config.storage_options)

    # ---- planning (driver) -------------------------------------------------------
    def list_inputs(self) -> list[InputItem]:
        """Scan the library, keep labels, split by song, and record labels and splits.

        The plan is written before any row is, so a run that dies half-way and
        its resume agree on every split; the runner claims the output first.
        """
        c = self.config
        storage = self.storage()
        listed = super().list_inputs()
        self.plan = plan_library(
            listed,
            storage=storage,
            seed=c.seed,
            fractions=dict(c.splits),
            skip_dirs=c.skip_dirs,
            min_per_label=c.min_per_label,
        )
        items = self.plan.items()
        if listed and not items and not c.allow_empty:
            raise SourceError(  # not "no inputs matched": they did, and the plan left every one out
                f"none of the {len(listed)} listed files is kept: {self._left_out()}; "
                "set allow_empty: true if an empty output is expected"
            )
        save_plan(storage, self.plan, c.seed, dict(c.splits))
        self._log_plan()
        return items

    def _left_out(self) -> str:
        """Why the scan left files out, in the config's words."""
        scan, c = self.plan.scan, self.config
        reasons = []
        if scan.dropped:
            dropped = ", ".join(f"{label} ({songs})" for label, songs in scan.dropped.items())
            reasons.append(f"labels with fewer than min_per_label ({c.min_per_label}) songs: {dropped}")
        loose = scan.loose
        if loose:
            reasons.append(
                f"{len(loose)} directly under the input folder, in no label folder "
                f"(e.g. {loose[0]}; the label is the file's folder)"
            )
        if scan.above_root:
            reasons.append(f"{len(scan.above_root)} {ABOVE_ROOT} (e.g. {scan.above_root[0]})")
        if scan.skipped:
            reasons.append(f"{scan.skipped} in skip_dirs {c.skip_dirs}")
        return "; ".join(reasons)

    def _log_plan(self) -> None:
        info = describe(self.plan, self.config.min_per_label)
        for group in lookalike_labels(self.plan.names):
            log.warning(
                "features: labels %s are one name in two Unicode forms (a folder copied from macOS?): they are "
                "separate labels; rename the folders to one form",
                " and ".join(repr(name) for name in group),
            )
        log.info("features: %d songs in %d labels", info["songs"], len(self.plan.scan.songs_per_label))
        if info["dropped_labels"]:
            log.warning(
                "features: dropped labels with fewer than %d songs: %s",
                info["min_per_label"],
                ", ".join(f"{k} ({v})" for k, v in info["dropped_labels"].items()),
            )
        above = self.plan.scan.above_root
        if self.plan.scan.loose:
            log.warning(
                "features: %d files directly under the root have no label folder and are left out",
                len(self.plan.scan.loose),
            )
        if above:
            log.warning("features: %d files are left out: %s (e.g. %s)", len(above), ABOVE_ROOT, above[0])
        if info["new_labels"] and len(info["new_labels"]) < len(self.plan.names):
            log.warning(
                "features: new labels %s are appended after the ones already written; files written earlier "
                'name fewer labels in their own datasets metadata, so load_dataset("parquet", data_files=...) '
                'without features= can fail on them ("Class label ... greater than configured num_classes"): '
                "%s (see docs/features.md)",
                info["new_labels"],
                how_to_load(self.config.output),
            )
        for label, splits in info["uncovered"].items():
            log.warning("features: label %s has no song in %s (no new song could move there)", label, splits)
        if len(self.plan.names) == 1:  # a classifier's dataset of one class: the input named one folder too high
            log.warning(
                "features: one label only (%s): a file's label is its first folder under the input; give the "
                "folder that holds the label folders",
                self.plan.names[0],
            )

    # ---- per-row work (workers) ------------------------------------------------
    def decoder(self) -> WindowDecoder:
        c = self.config
        return WindowDecoder(
            plan=snippet_plan(c),
            sample_rate=c.sample_rate,
            duration=c.snippet_seconds,
            index_column="snippet",
            min_duration=c.min_duration,
            silence_db=c.silence_db,
            storage_options=c.storage_options,
            passthrough=("label", "path"),
            valid_column="valid_samples",
        )

    def stages(self) -> list[StageSpec]:
        c = self.config
        return [
            StageSpec(
                FEATURES_STAGE,
                dict(
                    sample_rate=c.sample_rate,
                    n_mels=c.n_mels,
                    max_length=c.max_length,
                    normalize=c.normalize,
                    mean=c.mean,
                    std=c.std,
                ),
            )
        ]

    # ---- output -----------------------------------------------------------------
    def label_names(self) -> list[str]:
        if self.plan is not None:
            return self.plan.names
        return read_memory(self.storage(), self.config.seed, dict(self.config.splits))[0]

    def schema_metadata(self) -> dict[str, str]:
        return {"ray_pipelines.axes": json.dumps({"input_values": ["frame", "mel"]})}  # read by preview

    def class_labels(self) -> dict[str, list[str]]:
        return {"label": self.label_names()}

    def after_commit(self, storage: Storage, manifest: dict[str, Any]) -> dict[str, Any]:
        """The dataset card, then the class-balance report (JSON and PNG) from the committed manifests."""
        super().after_commit(storage, manifest)
        c = self.config
        names, songs = read_memory(storage, c.seed, dict(c.splits))
        progress = OutputState(storage, self.is_data_file).progress()
        snippets = {key: len(indices) for key, indices in progress.written.items()}
        failed = {key for key in progress.final_errors if not snippets.get(key)}
        filled = [split for split, fraction in c.splits.items() if fraction > 0]
        report = balance_report(names, songs, snippets, failed, list(c.splits), filled)
        if self.plan is not None:
            report["library"] = describe(self.plan, c.min_per_label)
        storage.write_json(BALANCE_JSON, report)
        storage.write_bytes(BALANCE_PNG, balance_chart(report))
        without = labels_without_rows(report["without_rows"])
        if without:
            log.warning(
                "features: %d labels have no rows in a split: %s (songs that failed to decode, that a keep or "
                "ignore list or limit left out, or none the plan could give it: %s)",
                len(report["without_rows"]),
                without,
                BALANCE_JSON,
            )
        # Shown in the job summary (short values) and returned to callers in JobResult.extra.
        dropped = report.get("library", {}).get("dropped_labels", {})
        return {
            "labels": f"{len(names)} (labels.json)",
            "labels without rows": without or "none",
            "dropped labels": dropped or "none",
            "under-represented": report["under_represented"] or "none",
            "over-represented": report["over_represented"] or "none",
            "class balance": f"{BALANCE_JSON}, {BALANCE_PNG}",
        }

    def throughput_units(self, rows: int) -> dict[str, float]:
        # snippets of snippet_seconds, a song's last one padded (not the audio it held)
        return {"snippet seconds": rows * self.config.snippet_seconds}


def labels_without_rows(without_rows: dict[str, list[str]], shown: int = 5) -> str:
    """The first ``shown`` labels with their empty splits, and how many more (a smoke run's ``limit`` leaves
    most of a large library's labels without rows)."""
    listed = [f"{label} ({', '.join(splits)})" for label, splits in list(without_rows.items())[:shown]]
    more = len(without_rows) - shown
    return "; ".join(listed) + (f"; and {more} more" if more > 0 else "")


def how_to_load(output: str) -> str:
    """How to load an output whose files name different label lists: through its dataset card, which
    ``load_dataset`` takes only from a local folder, or with its ``DatasetInfo``'s features (a URL's read with
    the job's storage options)."""
    protocol, path = split_protocol(output)
    if protocol != "file":
        return f"pass features=datasets.DatasetInfo.from_directory({output!r}, storage_options=...).features"
    features = f"features=datasets.DatasetInfo.from_directory({path!r}).features"
    return f"load with load_dataset({path!r}) (its dataset card) or pass {features}"


JOB = FeaturesJob


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    return run_job_command("features", argv)  # None: this process's command line


if __name__ == "__main__":
    sys.exit(main())
