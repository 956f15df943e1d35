"""Pre-generated contrastive views, read back for training."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from .footers import FooterTable, statistics_values
from .parquet import ShardRows, manifest_files, to_tensor
from .rowgroups import Footers


class ViewPair:
    """Row -> ``(view1, view2)`` float32 tensors (a class: DataLoader workers may pickle it)."""

    def __call__(self, row: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensor(row["view1"]).float(), to_tensor(row["view2"]).float()


class ContrastiveViews(ShardRows):
    """``(view1, view2)`` per clip, a different pre-generated version each epoch.

    An ``IterableDataset`` (a :class:`~.parquet.ShardRows`): an epoch yields every
    clip once across DataLoader workers and ranks, in an order shuffled from
    ``(seed, epoch)`` across all shards; ``set_epoch(e)`` picks, for every clip,
    version ``(e + offset(clip)) mod n_versions`` (offsets drawn from the seed, so
    clips do not all switch together) and only the row groups holding those
    versions are read. The augment job writes a row group per row (a view pair is
    larger than the writer's row-group target), so an epoch decodes one fifth of
    a five-version output, not all of it.

    The index of (clip, version) -> row comes from the row groups' statistics
    (one row each), or from the ``key`` and ``version`` columns. ``dataset[i]``
    reads clip ``i`` (sorted keys) alone, for a look at single items.

    ``batch_size=B`` (DataLoader ``batch_size=None``) yields ``(view1, view2)`` batches
    ``[B, *view shape]``, assembled in the worker straight into shared memory
    (:class:`~.parquet.ShardRows`).
    """

    def __init__(
        self,
        output: str,
        split: str = "train",
        *,
        seed: int = 0,
        shuffle: bool = True,
        storage_options: dict[str, Any] | None = None,
        **kwargs,
    ):
        records = manifest_files(output, split, storage_options)
        super().__init__(
            [f["url"] for f in records],
            columns=["view1", "view2"],
            shuffle=shuffle,
            seed=seed,
            transform=ViewPair(),
            storage_options=storage_options,
            sizes=[int(f["bytes"]) for f in records],
            **kwargs,
        )

    def _batch_float_dtype(self) -> torch.dtype:
        return torch.float32

    def _finish_batch(self, batch: dict[str, Any]) -> Any:
        """``(view1, view2)``, each ``[n, *view shape]`` float32 (batched mode)."""
        return self.batch_transform(batch) if self.batch_transform else (batch["view1"], batch["view2"])

    def _after_index(self, footers: Footers, tables: list[FooterTable | None] | None) -> None:
        keys, versions = self._keys_and_versions(footers, tables)
        unique_keys, clip = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
        self.keys = unique_keys.tolist()
        self._rows_by_clip = np.lexsort((versions, clip))  # row numbers sorted by (clip, version)
        self._versions_by_clip = versions[self._rows_by_clip]
        self._count = np.bincount(clip, minlength=len(self.keys))  # versions per clip
        self._first = np.cumsum(self._count) - self._count  # each clip's first position in those
        self.offsets = np.random.default_rng(self.seed).integers(0, 1 << 30, size=len(self.keys))

    def _keys_and_versions(
        self, footers: Footers, tables: list[FooterTable | None] | None
    ) -> tuple[list[str], np.ndarray]:
        """Per row: its key and version, from one-row row groups' statistics (read from the footers'
        tables when every file has one), else from the columns."""
        from_stats = None
        if self.files and tables is not None and all(table is not None for table in tables):
            from_stats = statistics_values(footers.parsed(0), tables, ("key", "version"))
        if from_stats is None:
            from_stats = _statistics_values(footers.each_parsed(), ("key", "version"))
        if from_stats is not None:
            keys, versions = from_stats
            return keys, np.asarray(versions, dtype=np.int64)
        keys: list[str] = []
        versions: list[int] = []
        for file, md in enumerate(footers.each_parsed()):
            table = self.reader.read(file, list(range(md.num_row_groups)), ["key", "version"])
            keys.extend(table.column("key").to_pylist())
            versions.extend(table.column("version").to_pylist())
        return keys, np.asarray(versions, dtype=np.int64)

    def _chosen(self, epoch: int) -> np.ndarray:
        """For each clip, its position in the (clip, version)-sorted rows this epoch."""
        return self._first + (epoch + self.offsets) % self._count

    def epoch_rows(self, epoch: int) -> np.ndarray:
        return np.sort(self._rows_by_clip[self._chosen(epoch)])

    def version_for(self, index: int, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        return int(self._versions_by_clip[self._first[index] + (epoch + self.offsets[index]) % self._count[index]])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self._rows_by_clip[self._chosen(self.epoch)[index]])
        chunk = int(np.searchsorted(self.chunk_first_row, row, side="right") - 1)
        columns = self._read_piece(chunk, np.array([row]))  # its row group alone, tensors from their pages
        return self.transform({name: values[0] for name, values in columns.items()})

    def clips(self) -> int:
        """Clips in the split (all ranks)."""
        return len(self.keys)


def _statistics_values(footers: Iterable[pq.FileMetaData], names: tuple[str, ...]) -> tuple[list, ...] | None:
    """Each row's value of ``names`` when every row group holds one row with min/max statistics; else None."""
    values: tuple[list, ...] = tuple([] for _ in names)
    for md in footers:
        if md.num_row_groups == 0:
            continue
        leaves = {md.schema.column(i).path: i for i in range(md.num_columns)}
        if any(name not in leaves for name in names):
            return None
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            if rg.num_rows != 1:
                return None
            for out, name in zip(values, names):
                stats = rg.column(leaves[name]).statistics
                if stats is None or not stats.has_min_max or stats.min != stats.max:
                    return None
                out.append(stats.min)
    return values
