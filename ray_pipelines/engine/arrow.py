"""NumPy batches <-> Arrow tables: the one tensor representation every output uses.

A tensor column ``[n, d1, ..., dk]`` is written as nested fixed-size lists,
``fixed_size_list<... fixed_size_list<T not null>[dk] ...>[d1]``: the values
in one contiguous row-major buffer (no copy on write or read), the shape in
the type itself. It is a plain Arrow/Parquet type, so every reader keeps the
shape without this project's code: Hugging Face ``datasets`` (as nested
``List(length=...)``, or ``Array2D``..``Array5D`` through the dataset card),
polars (``Array(Float32, shape=...)``), DuckDB (``FLOAT[][]``), pyarrow
(``column.flatten(recursive=True)`` reshaped by the list sizes). The values
are declared non-null: Parquet then stores no definition levels for them, and
pyarrow reads them 1.1-1.4x as fast as nullable values and 1.07x as fast as
``arrow.fixed_shape_tensor`` (``bench/formats.py``; docs/architecture.md,
*Readable by others*, has why not ``arrow.fixed_shape_tensor``).

:func:`column_to_numpy` reads this and the ``arrow.fixed_shape_tensor``
columns outputs written before (``OUTPUT_FORMAT`` 1) hold, as ``[n, *shape]``.
:func:`open_parquet` is how the project opens a Parquet file to read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def tensor_type(value_type: pa.DataType, shape: tuple[int, ...] | list[int]) -> pa.DataType:
    """The Arrow type of a tensor column of per-row ``shape`` (non-null values, innermost last)."""
    if not shape:
        raise ValueError("a tensor column needs at least one dimension per row")
    arrow_type = value_type
    for size in reversed(shape):
        arrow_type = pa.list_(pa.field("element", arrow_type, nullable=False), int(size))
    return arrow_type


def tensor_array(values: np.ndarray) -> pa.FixedSizeListArray:
    """``[n, *shape]`` numbers -> n nested fixed-size lists over the same buffer (no copy)."""
    values = np.ascontiguousarray(values)
    if values.ndim < 2:
        raise ValueError(f"a tensor column needs [n, ...] data, got shape {values.shape}")
    array: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, type=pa.list_(pa.field("element", array.type, False), size))
    return array


def tensor_shape(arrow_type: pa.DataType) -> tuple[list[int], pa.DataType] | None:
    """``(shape, value type)`` of a tensor column's type (nested fixed-size lists of numbers or
    booleans, or ``arrow.fixed_shape_tensor``); None for any other type."""
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        return list(arrow_type.shape), arrow_type.value_type
    shape = []
    while pa.types.is_fixed_size_list(arrow_type):
        shape.append(arrow_type.list_size)
        arrow_type = arrow_type.value_type
    if shape and (
        pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
    ):
        return shape, arrow_type
    return None


def column_array(values: np.ndarray) -> pa.Array:
    """One output column: tensors for ndim > 1, plain Arrow arrays otherwise."""
    if isinstance(values, np.ndarray) and values.ndim > 1 and values.dtype != object:
        return tensor_array(values)
    if isinstance(values, np.ndarray) and values.dtype.kind in "OUS":
        items = values.tolist()
        if all(isinstance(v, str) for v in items):
            return pa.array(items, type=pa.string())
        return pa.array(items)
    return pa.array(values)


def table_from_columns(columns: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> pa.Table:
    table = pa.table({name: column_array(values) for name, values in columns.items()})
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return table


def large_strings(data: bytes | np.ndarray, lengths: np.ndarray) -> pa.LargeStringArray:
    """Strings whose UTF-8 bytes are ``data``, one after the other, ``lengths`` bytes each, as an Arrow
    array made from its buffers: no Python object per string (and ``pa.array`` of a Python list imports
    pandas, which a reader of tensor columns otherwise never needs). Not checked for UTF-8."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column -> NumPy, tensors as ``[n, *shape]`` (either representation)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    described = tensor_shape(column.type)
    if described is not None and column.null_count == 0:
        values = column.flatten(recursive=True)
        if values.null_count == 0:
            return values.to_numpy(zero_copy_only=False).reshape(len(column), *described[0])
    return column.to_numpy(zero_copy_only=False)


def table_to_numpy(table: pa.Table, columns: list[str] | None = None) -> dict[str, Any]:
    names = columns or table.column_names
    return {name: column_to_numpy(table.column(name)) for name in names}


def open_parquet(source, metadata: pq.FileMetaData | None = None, **kwargs) -> pq.ParquetFile:
    """pyarrow's ``ParquetFile`` without pre-buffering. pyarrow pre-buffers by default: each column
    chunk's read is handed to Arrow's I/O thread pool and the reading thread waits for it, two thread
    wake-ups per chunk. The outputs put a tensor row in a row group of its own, so reading their small
    columns is a chunk per row, and the hand-over cost more than the reads: encode's eleven small
    columns of a 128-row file took 10.9 ms with it and 4.3 ms without, and the score job's listing of
    a file's keys through a Python file object 13.5 and 2.2 ms (docs/benchmarks.md, readers: *pyarrow
    without pre-buffering*). On object stores fsspec's read-ahead serves the reads either way."""
    return pq.ParquetFile(source, metadata=metadata, pre_buffer=False, **kwargs)
