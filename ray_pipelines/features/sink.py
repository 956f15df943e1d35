"""The features sink: the engine's Parquet shards with typed columns for datasets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..engine.arrow import column_array
from ..engine.sink import ShardSink
from .hf import NESTED_LIST, tensor_column

# Arrow types of the scalar columns, fixed so every shard has the same schema
# (and the one the datasets metadata describes).
SCALAR_TYPES = {"label": pa.int64(), "path": pa.string(), "snippet": pa.int64(), "start_seconds": pa.float64()}


class FeaturesSink(ShardSink):
    """``input_values`` as nested fixed-size lists (or fixed_shape_tensor), scalars with fixed types."""

    key_column = "path"  # the song's key (the data has no separate key column)

    def __init__(self, *, tensor_type: str = NESTED_LIST, **kwargs):
        super().__init__(**kwargs)
        self.tensor_type = tensor_type

    def make_table(self, rows: dict[str, np.ndarray]) -> pa.Table:
        columns = {}
        for name in self.output_columns:
            values = rows[name]
            if name == "input_values":
                columns[name] = tensor_column(values.astype(np.float32, copy=False), self.tensor_type)
            elif name in SCALAR_TYPES:
                columns[name] = pa.array(values.tolist(), type=SCALAR_TYPES[name])
            else:
                columns[name] = column_array(values)
        metadata = {"ray_pipelines.fingerprint": self.fingerprint, **self.schema_metadata}
        return pa.table(columns).replace_schema_metadata(metadata)
