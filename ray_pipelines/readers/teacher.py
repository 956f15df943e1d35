"""A teacher cache read back for training: ``(x, y, f0, db)`` tuples or dicts.

Built on :class:`~.parquet.ShardRows`: rows stream one Parquet row group at
a time (memory stays at about one row group plus the shuffle buffer per
worker), row groups are shuffled across all shards and then rows within a
buffer, and row groups are split among DataLoader workers and ranks so that
an epoch yields every row exactly once.

Which columns make the tuple is up to the caller: a synthetic cache with an
effect teacher has ``x, y, f0, db`` as written; for an audio cache name the
teacher columns instead, e.g. ``fields=("x", "y", "pesto_f0", "loudness_db")``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

from ..storage import Storage
from .parquet import ShardRows, list_shards

DEFAULT_FIELDS = ("x", "y", "f0", "db")


def _to_torch(value: Any, dtype: torch.dtype | None) -> Any:
    """Arrays and numbers become tensors (floats cast to ``dtype`` if given); strings stay strings."""
    if isinstance(value, str):
        return value
    tensor = torch.from_numpy(np.array(value, copy=True))
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


class RowToTuple:
    """Row dict -> tuple of tensors in ``fields`` order (a class, not a lambda: workers may pickle it)."""

    def __init__(self, fields: Sequence[str], dtype: torch.dtype | None):
        self.fields, self.dtype = tuple(fields), dtype

    def __call__(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(_to_torch(row[name], self.dtype) for name in self.fields)


class RowToDict:
    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {name: _to_torch(value, self.dtype) for name, value in row.items()}


class TeacherCache(IterableDataset):
    """Rows of a teacher job's output split.

    ``fields``: the columns of each tuple (default ``x, y, f0, db``);
    ``as_dict=True`` yields ``{column: value}`` for ``columns`` (default all).
    ``dtype``: cast float tensors (e.g. ``torch.float32`` from a float64 cache).
    ``shuffle``/``seed``/``shuffle_buffer``: reproducible per ``(seed, epoch)``;
    call :meth:`set_epoch` between epochs. ``rank``/``world_size`` shard
    between distributed processes.
    """

    def __init__(
        self,
        output: str,
        split: str = "train",
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        as_dict: bool = False,
        columns: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
        storage_options: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.files = list_shards(output, split, storage_options)
        available = self._column_names(storage_options)
        wanted = list(columns or available) if as_dict else list(fields)
        missing = [name for name in wanted if name not in available]
        if missing:
            hint = " (no teacher in this cache outputs y)" if "y" in missing else ""
            raise ValueError(
                f"{output} [{split}] has no column {', '.join(missing)}{hint}; columns: {', '.join(available)}"
            )
        transform = RowToDict(dtype) if as_dict else RowToTuple(wanted, dtype)
        self.rows = ShardRows(
            self.files,
            columns=wanted,
            shuffle=shuffle,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            transform=transform,
            storage_options=storage_options,
            rank=rank,
            world_size=world_size,
        )
        self.columns = wanted

    def _column_names(self, storage_options: dict[str, Any] | None) -> list[str]:
        if not self.files:
            return []
        storage = Storage(posixpath.dirname(self.files[0]), storage_options)
        with storage.fs.open(storage.abspath(posixpath.basename(self.files[0])), "rb") as f:
            return list(pq.read_schema(f).names)

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)
