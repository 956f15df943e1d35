"""Parquet footers read as tables of numbers, without a Python object per row group.

A reader's index needs each row group's rows, size and byte range, and
``ContrastiveViews`` each one-row group's key and version (its statistics).
pyarrow gives them one metadata object and property call at a time: for an
augment output of 5,965 one-row groups that made a reader's start 112-152 ms
(now 36-41), about an epoch of reading once started. :func:`footer_table` walks
the footer's Thrift bytes once in a compiled kernel (``page_kernels.footer_tables``)
and returns the numbers as arrays. Used where the page decoder's kernels are
loaded anyway (readers of tensor columns, :mod:`.pages`); anything the kernel
does not expect makes it give up, and the caller asks pyarrow as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.arrow import large_strings
from .pages import load_kernels, read_only

# Parquet's enums, named as pyarrow names them (it calls LZ4_RAW, what it writes for "lz4", "LZ4" too).
CODEC_NAMES = ("UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4")
PHYSICAL_TYPES = ("BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY")


class ChunkFacts(NamedTuple):
    """What :func:`.pages.decode_chunk` and :func:`.rowgroups.chunk_range` ask of a column chunk, under
    the names of pyarrow's ``ColumnChunkMetaData`` (which they also take)."""

    compression: str
    has_dictionary_page: bool
    physical_type: str
    num_values: int
    data_page_offset: int
    dictionary_page_offset: int
    total_compressed_size: int


def _name(names: tuple[str, ...], number: int) -> str:
    return names[number] if 0 <= number < len(names) else f"unknown {number}"


@dataclass(frozen=True)
class FooterTable:
    """One file's row groups and column chunks (``page_kernels.CHUNK_*`` fields), from its footer."""

    row_groups: np.ndarray  # [groups, 2]: rows, total byte size
    chunks: np.ndarray  # [groups, columns, CHUNK_FIELDS]
    raw: bytes  # the footer's bytes, which the statistics' offsets point into

    @property
    def rows(self) -> np.ndarray:
        return self.row_groups[:, 0]

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row group's first byte and end (over its column chunks, dictionary pages included)."""
        if not self.chunks.shape[1]:
            return np.zeros(len(self.row_groups), np.int64), np.zeros(len(self.row_groups), np.int64)
        kernels = load_kernels()
        data = self.chunks[:, :, kernels.CHUNK_DATA_PAGE]
        dictionary = self.chunks[:, :, kernels.CHUNK_DICTIONARY_PAGE]
        begin = np.where((dictionary > 0) & (dictionary < data), dictionary, data)
        end = begin + self.chunks[:, :, kernels.CHUNK_COMPRESSED]
        return begin.min(axis=1), end.max(axis=1)

    def chunk(self, group: int, column: int, name: str) -> ChunkFacts | None:
        """Row group ``group``'s chunk of leaf ``column``; None when that leaf's path does not start with
        ``name`` (a file whose columns are not where the first file's were)."""
        kernels = load_kernels()
        fields = self.chunks[group, column].tolist()
        at, length = fields[kernels.CHUNK_NAME_AT], fields[kernels.CHUNK_NAME_LENGTH]
        if at < 0 or self.raw[at : at + length] != name.encode():
            return None
        return ChunkFacts(
            _name(CODEC_NAMES, fields[kernels.CHUNK_CODEC]),
            fields[kernels.CHUNK_DICTIONARY_PAGE] >= 0,
            _name(PHYSICAL_TYPES, fields[kernels.CHUNK_TYPE]),
            fields[kernels.CHUNK_VALUES],
            fields[kernels.CHUNK_DATA_PAGE],
            fields[kernels.CHUNK_DICTIONARY_PAGE],
            fields[kernels.CHUNK_COMPRESSED],
        )


def footer_table(raw: bytes) -> FooterTable | None:
    """``raw`` (a footer's Thrift bytes) as a table; None when the kernel gives up on it."""
    kernels = load_kernels()
    ok, row_groups, chunks = kernels.footer_tables(read_only(np.frombuffer(raw, dtype=np.uint8)))
    if not ok or (row_groups < 0).any():
        return None
    return FooterTable(row_groups, chunks, raw)


def statistics_values(
    first: pq.FileMetaData, tables: list[FooterTable], names: tuple[str, ...]
) -> tuple[pa.LargeStringArray | np.ndarray, ...] | None:
    """Each row's value of the scalar columns ``names`` (strings, 32 or 64-bit integers, as in the first
    file's schema ``first``) from the statistics of one-row groups, as pyarrow's ``statistics.min``
    gives them: strings as an Arrow array, integers as int64; None when a file has larger groups, a
    column elsewhere or without statistics, or of another type, or a string that is not UTF-8.
    All the tables' footers at once, with NumPy: a Python ``bytes`` per row group cost 1 us, NumPy's
    calls per file 50 us."""
    kernels = load_kernels()
    leaves = {first.schema.column(i).path: i for i in range(first.num_columns)}
    if any(name not in leaves for name in names):
        return None
    kinds = []
    for name in names:
        column = first.schema.column(leaves[name])
        if column.physical_type == "BYTE_ARRAY" and column.logical_type.type == "STRING":
            kinds.append((PHYSICAL_TYPES.index("BYTE_ARRAY"), None))
        elif column.physical_type in ("INT32", "INT64") and column.logical_type.type == "NONE":
            kinds.append((PHYSICAL_TYPES.index(column.physical_type), 4 if column.physical_type == "INT32" else 8))
        else:
            return None
    tables = [table for table in tables if len(table.row_groups)]
    if any((table.rows != 1).any() or table.chunks.shape[1] != first.num_columns for table in tables):
        return None
    raw = np.frombuffer(b"".join(table.raw for table in tables), dtype=np.uint8)
    # Each row group's footer: where its bytes start and end in ``raw``.
    footer_bytes = np.array([len(table.raw) for table in tables], dtype=np.int64)
    groups = np.array([len(table.row_groups) for table in tables], dtype=np.int64)
    end = np.repeat(np.cumsum(footer_bytes), groups)
    start = end - np.repeat(footer_bytes, groups)
    columns = []
    for name, (physical, width) in zip(names, kinds):
        leaf = leaves[name]
        for table in tables:  # the leaf is ``name`` in every file
            named_at, named_length = (
                table.chunks[0, leaf, kernels.CHUNK_NAME_AT],
                table.chunks[0, leaf, kernels.CHUNK_NAME_LENGTH],
            )
            if table.raw[named_at : named_at + named_length] != name.encode():
                return None
        fields = (
            np.concatenate([table.chunks[:, leaf] for table in tables])
            if tables
            else np.zeros((0, kernels.CHUNK_FIELDS), np.int64)
        )
        if (fields[:, kernels.CHUNK_TYPE] != physical).any():
            return None
        values = _equal_min_max(raw, fields, start, end)
        if values is None:
            return None
        data, lengths = values
        if width is not None:
            if (lengths != width).any():
                return None
            columns.append(data.view(f"<i{width}").astype(np.int64))
            continue
        strings = large_strings(data, lengths)
        try:
            strings.validate(full=True)  # UTF-8
        except pa.ArrowInvalid:
            return None
        columns.append(strings)
    return tuple(columns)


def _equal_min_max(
    raw: np.ndarray, fields: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The statistics values of one column chunk per row (``fields``, their offsets within each row's
    footer, which is ``raw[start:end]``) when min equals max in every one: their bytes one after the other
    and each one's length; None when a chunk has none, min and max differ or an offset leaves its footer."""
    kernels = load_kernels()
    low_at, low_length = fields[:, kernels.CHUNK_MIN_AT], fields[:, kernels.CHUNK_MIN_LENGTH]
    high_at, high_length = fields[:, kernels.CHUNK_MAX_AT], fields[:, kernels.CHUNK_MAX_LENGTH]
    if (low_at < 0).any() or (high_at < 0).any() or (low_length < 0).any() or (low_length != high_length).any():
        return None
    low_at, high_at = low_at + start, high_at + start
    if (low_at + low_length > end).any() or (high_at + high_length > end).any():
        return None
    ends = np.cumsum(low_length)
    within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - low_length, low_length)
    low = raw[np.repeat(low_at, low_length) + within]
    if not np.array_equal(low, raw[np.repeat(high_at, low_length) + within]):
        return None
    return low, low_length
