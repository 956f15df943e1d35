"""NumPy batches <-> Arrow tables with the standard fixed-shape tensor type.

Tensor columns use ``arrow.fixed_shape_tensor`` (a canonical Arrow extension
type), so plain pyarrow, Ray Data and other Arrow readers get ``[n, ...]``
arrays back without this project's code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def tensor_array(values: np.ndarray) -> pa.ExtensionArray:
    """``[n, *shape]`` -> a ``fixed_shape_tensor`` array of n tensors."""
    values = np.ascontiguousarray(values)
    if values.ndim < 2:
        raise ValueError(f"a tensor column needs [n, ...] data, got shape {values.shape}")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(values)


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


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column -> NumPy, tensors as ``[n, *shape]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
        return fixed_size_list_to_numpy(column)
    return column.to_numpy(zero_copy_only=False)


def fixed_size_list_to_numpy(column: pa.FixedSizeListArray) -> np.ndarray:
    """Nested fixed-size lists of numbers (how Hugging Face datasets stores fixed-length
    arrays) -> ``[n, *shape]``; anything else -> an object array, as before."""
    shape, values = [], column
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()
    if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        return column.to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=False).reshape(len(column), *shape)


def table_to_numpy(table: pa.Table, columns: list[str] | None = None) -> dict[str, Any]:
    names = columns or table.column_names
    return {name: column_to_numpy(table.column(name)) for name in names}
