"""Stream rows out of a job's Parquet shards, for training loops.

``ShardRows`` is an ``IterableDataset`` that reads one row group at a time
(memory stays at about one row group per worker), splits the row groups
among DataLoader workers (and ranks) so every row is read exactly once per
epoch, and optionally shuffles row-group order and rows within a buffer,
reproducibly per ``(seed, epoch)``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..engine.arrow import table_to_numpy
from ..storage import Storage


def list_shards(output: str, split: str | None = None, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Data files of a committed output (from manifest.json), optionally one split's."""
    storage = Storage(output, storage_options)
    if not storage.exists("manifest.json"):
        raise FileNotFoundError(f"{output} has no manifest.json: is the job committed (_SUCCESS)?")
    manifest = storage.read_json("manifest.json")
    files = [f for f in manifest["files"] if split is None or f.get("split") == split]
    if split is not None and not files:
        splits = sorted({f.get("split") for f in manifest["files"]})
        raise ValueError(f"split {split!r} not in {output} (splits: {', '.join(splits)})")
    return [storage.url(f["path"]) for f in files if f["path"].endswith(".parquet")]


def open_parquet(url: str, storage_options: dict[str, Any] | None = None) -> pq.ParquetFile:
    """A Parquet shard (local path or fsspec URL), opened for row-group reads."""
    storage = Storage(posixpath.dirname(url), storage_options)
    return pq.ParquetFile(storage.fs.open(storage.abspath(posixpath.basename(url)), "rb"))


class ShardRows(IterableDataset):
    """Rows (dicts of NumPy values) from Parquet shards, streamed row group by row group.

    ``transform(row) -> item`` turns a row into what training needs.
    ``set_epoch(n)`` changes the shuffle order between epochs.
    """

    def __init__(
        self,
        files: list[str],
        columns: list[str] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 1024,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.files = list(files)
        self.columns = columns
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.transform = transform
        self.storage_options = storage_options
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._units: list[tuple[str, int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _open(self, url: str) -> pq.ParquetFile:
        return open_parquet(url, self.storage_options)

    def units(self) -> list[tuple[str, int]]:
        """(file, row group) pairs: the unit of work split among workers."""
        if self._units is None:
            self._units = [(f, g) for f in self.files for g in range(self._open(f).num_row_groups)]
        return self._units

    def __len__(self) -> int:
        return sum(self._open(f).metadata.num_rows for f in self.files)

    def _my_units(self) -> list[tuple[str, int]]:
        units = list(self.units())
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            rng.shuffle(units)
        info = get_worker_info()
        workers = info.num_workers if info else 1
        worker = info.id if info else 0
        shard, shards = self.rank * workers + worker, self.world_size * workers
        return units[shard::shards]

    def _rows(self) -> Iterator[dict[str, Any]]:
        current, handle = None, None
        for path, group in self._my_units():
            if path != current:
                current, handle = path, self._open(path)
            table = handle.read_row_group(group, columns=self.columns)
            batch = table_to_numpy(table)
            for i in range(table.num_rows):
                yield {name: values[i] for name, values in batch.items()}

    def __iter__(self) -> Iterator[Any]:
        rows = self._rows()
        if self.shuffle and self.shuffle_buffer > 1:
            rows = _buffer_shuffle(rows, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, 1]))
        for row in rows:
            yield self.transform(row) if self.transform else row


def _buffer_shuffle(rows: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buffer: list[Any] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def to_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(value, copy=True))
