"""Pre-generated contrastive views, read back for training."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..engine.arrow import large_strings
from .footers import FooterTable, statistics_values
from .parquet import ShardRows, manifest_files, then_transform, to_tensor
from .rowgroups import Footers, RowGroupIndex


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
    reads clip ``i`` alone, for a look at single items: the clip whose key is
    ``keys[i]`` (an Arrow array of the keys, sorted).

    ``transform``, in item mode, gets each ``(view1, view2)`` pair and returns what training needs.
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
        if kwargs.pop("columns", None) is not None:
            raise ValueError(
                "ContrastiveViews reads the view1 and view2 columns; for other columns of an augment output "
                "use ShardRows(list_shards(output, split), columns=[...])"
            )
        records = manifest_files(output, split, storage_options, job="augment")
        # Each batch of files' rows, from their footers (_footer_batch): its distinct keys, each row's
        # position among them and its version; None: read from the columns once the index is made.
        self._found: list[KeyedRows] | None = []
        super().__init__(
            [f["url"] for f in records],
            columns=["view1", "view2"],
            shuffle=shuffle,
            seed=seed,
            storage_options=storage_options,
            sizes=[int(f["bytes"]) for f in records],
            **kwargs,
        )
        self.transform = then_transform(ViewPair(), self.transform)

    def _batch_float_dtype(self) -> torch.dtype:
        return torch.float32

    def _finish_batch(self, batch: dict[str, Any]) -> Any:
        """``(view1, view2)``, each ``[n, *view shape]`` float32 (batched mode)."""
        return self.batch_transform(batch) if self.batch_transform else (batch["view1"], batch["view2"])

    def _footer_batch(self, footers: Footers, tables: list[FooterTable | None] | None, first: pq.FileMetaData) -> None:
        """Each row's key and version, from one-row row groups' statistics (read from the footers' tables
        when every file of the batch has one, else from pyarrow's parse)."""
        if self._found is None:
            return
        found = None
        if tables is not None and all(table is not None for table in tables):
            found = statistics_values(first, tables, ("key", "version"))
        if found is None:
            parsed = _statistics_values(footers.each_parsed(), ("key", "version"))
            if parsed is None:
                self._found = None  # the columns, every file's
                return
            found = string_array(parsed[0]), np.asarray(parsed[1], dtype=np.int64)
        self._found.append(KeyedRows.of(*found))

    def _after_index(self) -> None:
        if self.cached is not None:  # from the index cache (_cached_arrays, checked by _check_cached)
            self.keys = large_strings(self.cached["key_bytes"], self.cached["key_lengths"])
            self._rows_by_clip = self.cached["rows_by_clip"]
            self._versions_by_clip = self.cached["versions_by_clip"]
            self._count = self.cached["versions_per_clip"]
        else:
            found = self._found if self._found is not None else self._keys_and_versions_read()
            self.keys, clip = KeyedRows.numbered(found)
            versions = np.concatenate([part.versions for part in found]) if found else np.zeros(0, np.int64)
            self._rows_by_clip = np.lexsort((versions, clip))  # row numbers sorted by (clip, version)
            self._versions_by_clip = versions[self._rows_by_clip]
            self._count = np.bincount(clip, minlength=len(self.keys))  # versions per clip
        del self._found
        self._first = np.cumsum(self._count) - self._count  # each clip's first position in those
        self.offsets = np.random.default_rng(self.seed).integers(0, 1 << 30, size=len(self.keys))

    def _check_cached(self, cached: dict[str, np.ndarray], index: RowGroupIndex) -> None:
        names = ("key_bytes", "key_lengths", "rows_by_clip", "versions_by_clip", "versions_per_clip")
        if any(name not in cached or cached[name].ndim != 1 for name in names):
            raise ValueError("no clips")
        data, lengths, rows, versions, count = (cached[name] for name in names)
        total = index.num_rows
        if not (
            data.dtype == np.uint8
            and all(a.dtype == np.int64 for a in (lengths, rows, versions, count))
            and len(lengths) == len(count)
            and int(lengths.sum()) == len(data)
            and (lengths >= 0).all()
            and (count > 0).all()
            and int(count.sum()) == len(rows) == len(versions) == total
            and (len(rows) == 0 or (rows.min() >= 0 and rows.max() < total))
        ):
            raise ValueError("its clips do not fit its index")

    def _cached_arrays(self) -> dict[str, np.ndarray]:
        """The clips' keys (UTF-8 bytes and lengths) and their rows and versions, for the index cache."""
        offsets = np.frombuffer(self.keys.buffers()[1], np.int64, len(self.keys) + 1, self.keys.offset)
        data = np.frombuffer(self.keys.buffers()[2], np.uint8) if len(self.keys) else np.zeros(0, np.uint8)
        return {
            "key_bytes": data[offsets[0] : offsets[-1]],
            "key_lengths": np.diff(offsets),
            "rows_by_clip": self._rows_by_clip,
            "versions_by_clip": self._versions_by_clip,
            "versions_per_clip": self._count,
        }

    def _keys_and_versions_read(self) -> list[KeyedRows]:
        """Each file's rows' keys and versions, read from the columns (row groups without statistics, or
        larger)."""
        found = []
        for file in range(len(self.files)):
            at = self.index.file_groups(file)
            table = self.reader.read(file, list(range(at.stop - at.start)), ["key", "version"])
            keys = table.column("key").combine_chunks().cast(pa.large_string())
            found.append(KeyedRows.of(keys, np.asarray(table.column("version").to_pylist(), dtype=np.int64)))
        return found

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


@dataclass
class KeyedRows:
    """Some rows' keys, as their distinct keys and each row's position among them (a clip's versions
    are mostly written together: a fifth of the keys), and the rows' versions."""

    distinct: pa.Array
    position: np.ndarray  # int32
    versions: np.ndarray  # int64

    @classmethod
    def of(cls, keys: pa.Array, versions: np.ndarray) -> KeyedRows:
        distinct = pc.unique(keys)
        return cls(distinct, int_values(pc.index_in(keys, value_set=distinct)), versions)

    @staticmethod
    def numbered(parts: list[KeyedRows]) -> tuple[pa.Array, np.ndarray]:
        """Every part's rows' keys numbered together: the distinct keys, sorted, and each row's number
        (:func:`sorted_unique` over all the rows' keys, which are never all held)."""
        if not parts:
            return string_array([]), np.zeros(0, np.int64)
        keys, number = sorted_unique(pa.concat_arrays([part.distinct for part in parts]))
        starts = np.cumsum([0] + [len(part.distinct) for part in parts[:-1]])
        return keys, np.concatenate([number[start + part.position] for start, part in zip(starts, parts)])


def int_values(array: pa.Array) -> np.ndarray:
    """An int32 array without nulls (what ``pc.index_in`` gives for values all in its set) as NumPy, from
    its buffer: pyarrow's ``to_numpy`` imports pandas, which a reader of tensor columns otherwise never
    needs."""
    if array.type != pa.int32() or array.null_count:
        raise ValueError(f"expected int32 values without nulls, got {array.type} with {array.null_count} nulls")
    return np.frombuffer(array.buffers()[1], np.int32, len(array), array.offset * 4)


def sorted_unique(keys: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The distinct ``keys``, sorted, and each one's position among them: ``np.unique(keys,
    return_inverse=True)`` in Arrow, without a Python string per row (an output of 10 million clips in
    five versions held 50 million of them, 4 GB, and sorted them in Python)."""
    unique = pc.unique(keys)
    unique = unique.take(pc.sort_indices(unique))
    return unique, int_values(pc.index_in(keys, value_set=unique)).astype(np.int64)


def string_array(values: list[str]) -> pa.LargeStringArray:
    """``values`` as an Arrow array (:func:`~ray_pipelines.engine.arrow.large_strings`)."""
    encoded = [value.encode() for value in values]
    return large_strings(b"".join(encoded), np.array([len(value) for value in encoded], dtype=np.int64))


def _statistics_values(footers: Iterable[pq.FileMetaData], names: tuple[str, ...]) -> tuple[list, ...] | None:
    """Each row's value of ``names`` when every row group holds one row with min/max statistics (strings
    UTF-8); else None."""
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
                try:
                    if stats is None or not stats.has_min_max or stats.min != stats.max:
                        return None
                except UnicodeDecodeError:  # a string that is not UTF-8: the columns are read
                    return None
                out.append(stats.min)
    return values
