"""What a job is: the few things that differ between augment, teacher, encode, ..."""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import CommonConfig
from ..sources import InputItem, list_specs
from ..storage import Storage
from .decode import PIECE_BYTES
from .hf import write_dataset_card
from .manifest import default_is_data_file
from .sink import ShardSink


@dataclass
class StageSpec:
    """One actor-pool stage: a callable class and its constructor kwargs.

    ``cls`` is the class, or its ``"package.module:ClassName"``: a name is imported only where the
    stage runs (in the actor's constructor), so a stage module that imports torch never loads in the
    driver. Ray Data's operator is named after the class either way (``MapBatches(AugmentStage)``).
    ``gpu``: the stage benefits from a GPU (it gets ``num_gpus`` per actor when
    the cluster has GPUs); CPU-only stages never ask for one.
    """

    cls: type | str
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    gpu: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.cls, str):
            module, _, name = self.cls.partition(":")
            if not module or not name.isidentifier():
                raise ValueError(f"a stage name must look like 'package.module:ClassName', got {self.cls!r}")

    @property
    def name(self) -> str:
        """The stage class's name (what Ray Data's operator is called)."""
        return stage_name(self.cls)

    def resolve(self) -> type:
        """The stage class itself (imports its module when ``cls`` is a name)."""
        return stage_class(self.cls)


def stage_name(cls: type | str) -> str:
    """``AugmentStage`` for the class or for ``"ray_pipelines.stages.augment:AugmentStage"``."""
    return cls.rpartition(":")[2] if isinstance(cls, str) else cls.__name__


def stage_class(cls: type | str) -> type:
    """The class itself, or the one ``"package.module:ClassName"`` names (its module imported here)."""
    if not isinstance(cls, str):
        return cls
    module, _, name = cls.partition(":")
    return getattr(importlib.import_module(module), name)


class Job(abc.ABC):
    """A job: its config model, how inputs become rows, its stages, its sink.

    The engine (``run_job``) does the rest: listing, skipping committed
    inputs, the Ray Data plan, manifests, commit and the summary.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[CommonConfig]]
    index_column: ClassVar[str] = "index"  # the per-input sample number column (version, window, ...)
    # The data column holding each row's input key (read back when a changed input's rows are dropped).
    key_column: ClassVar[str] = "key"
    rows_label: ClassVar[str] = "rows"  # what a written row is, for the summary
    # Bytes a Parquet row group aims at (None: the sink's TARGET_ROW_GROUP_BYTES, a tensor row a group).
    # Jobs whose every row each epoch reads set WHOLE_READ_ROW_GROUP_BYTES (engine/sink.py says why).
    row_group_bytes: ClassVar[int | None] = None
    # On CPU clusters the first actor decodes its own blocks, this many inputs at a time
    # (None: the whole block at once). Jobs whose decoded inputs are large set a few.
    decode_chunk: ClassVar[int | None] = None
    # What of a block's decoded audio goes through the stage and out at once (``engine.decode.PIECE_BYTES``).
    piece_bytes: int = PIECE_BYTES

    def __init__(self, config: CommonConfig):
        self.config = config

    # ---- planning (driver) -------------------------------------------------------
    def list_inputs(self) -> list[InputItem]:
        """Everything the input specs hold now (the engine compares it with what the output
        committed: new, changed and deleted inputs). Restricting it is :meth:`pick_inputs`'s job."""
        c = self.config
        return list_specs(c.inputs(), c.extensions, c.storage_options, c.allow_empty, c.include_hidden)

    def pick_inputs(self, items: list[InputItem]) -> list[InputItem]:
        """The listed inputs (after keep/ignore lists) this run takes; the engine then sorts them
        and applies ``limit``. Inputs left out are neither processed nor counted as deleted."""
        return items

    def fingerprint_extra(self) -> dict[str, Any]:
        """Anything besides the config that changes output bytes (model weight hashes)."""
        return {}

    # ---- per-row work (workers) ------------------------------------------------
    @abc.abstractmethod
    def decoder(self) -> Callable:
        """A callable for CPU tasks: input rows -> sample rows (see engine.decode)."""

    @abc.abstractmethod
    def stages(self) -> list[StageSpec]:
        """Actor-pool stages, in order."""

    # ---- output -----------------------------------------------------------------
    @property
    @abc.abstractmethod
    def output_columns(self) -> list[str]:
        """Columns written to the data files, in order."""

    def schema_metadata(self) -> dict[str, str]:
        return {}

    def class_labels(self) -> dict[str, list[str]]:
        """Integer label columns and their names: ``ClassLabel`` features for Hugging Face datasets."""
        return {}

    def sink_options(self, fingerprint: str) -> dict[str, Any]:
        """The :class:`ShardSink` arguments of this job's config and columns (a job with a sink of its
        own passes them on to it)."""
        cfg = self.config
        return dict(
            output=cfg.output,
            storage_options=cfg.storage_options,
            fingerprint=fingerprint,
            index_column=self.index_column,
            output_columns=self.output_columns,
            rows_per_file=cfg.rows_per_file,
            compression=cfg.compression,
            direct_io=cfg.direct_io,
            schema_metadata={"ray_pipelines.job": self.name, **self.schema_metadata()},
            class_labels=self.class_labels(),
            key_column=self.key_column,
            row_group_bytes=self.row_group_bytes,
        )

    def make_sink(self, fingerprint: str) -> ShardSink:
        return ShardSink(**self.sink_options(fingerprint))

    def is_data_file(self, relpath: str) -> bool:
        return default_is_data_file(relpath)

    def after_commit(self, storage: Storage, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write extras next to the data; returns entries for the summary. Here: the Hugging Face
        dataset card (README.md, dataset_info.json) of the Parquet files, so ``load_dataset(output)``
        gives every split with its features; jobs that add extras call this first."""
        write_dataset_card(storage, manifest, self.name, self.class_labels(), self.writes_parquet())
        return {}

    def writes_parquet(self) -> bool:
        """Whether the output's rows are Parquet files (a Hugging Face dataset card describes them)."""
        return True

    def throughput_units(self, rows: int) -> dict[str, float]:
        """Extra throughput figures for the summary, e.g. ``{"views": 2 * rows}``."""
        return {}
