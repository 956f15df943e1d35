"""How the features output is typed: Arrow columns plus Hugging Face datasets metadata.

Hugging Face ``datasets`` (checked with 5.2) cannot read the canonical
``arrow.fixed_shape_tensor`` extension type: ``load_dataset("parquet")`` stops
with "Arrow type extension<arrow.fixed_shape_tensor...> does not have a
datasets dtype equivalent", for every column, not just the tensor. So by
default ``input_values`` is written as nested fixed-size lists
(``fixed_size_list<fixed_size_list<float>[n_mels]>[max_length]``): the same
contiguous float32 buffer a fixed_shape_tensor holds, a plain Arrow type that
pyarrow, Polars, DuckDB, Ray Data and datasets all read, and exactly the type
``datasets`` uses for ``Sequence(Sequence(float32, n_mels), max_length)``.
``tensor_type: fixed_shape_tensor`` writes the extension type instead, for
readers that want it and do not need datasets.

The datasets feature description goes into the Parquet schema metadata
(key ``huggingface``), so ``label`` loads as a ``ClassLabel`` with the label
names. It is written by hand: datasets is not needed at run time.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.arrow import column_array

NESTED_LIST = "nested_list"
FIXED_SHAPE_TENSOR = "fixed_shape_tensor"


def nested_list_array(values: np.ndarray) -> pa.FixedSizeListArray:
    """``[n, d1, ..., dk]`` numbers -> n nested fixed-size lists (no copy of the values)."""
    values = np.ascontiguousarray(values)
    array: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def tensor_column(values: np.ndarray, tensor_type: str) -> pa.Array:
    if tensor_type == NESTED_LIST:
        return nested_list_array(values)
    if tensor_type == FIXED_SHAPE_TENSOR:
        return column_array(values)
    raise ValueError(f"unknown tensor_type {tensor_type!r}")


def _sequence(feature: dict[str, Any], length: int) -> dict[str, Any]:
    # "Sequence" with a length: read by datasets 2.x to 5.x alike (5.x maps it to List).
    return {"_type": "Sequence", "feature": feature, "length": int(length)}


def datasets_features(label_names: list[str], max_length: int, n_mels: int) -> dict[str, Any]:
    """The ``datasets.Features.to_dict()`` form of the output columns."""
    values = _sequence(_sequence({"_type": "Value", "dtype": "float32"}, n_mels), max_length)
    return {
        "input_values": values,
        "label": {"_type": "ClassLabel", "names": list(label_names)},
        "path": {"_type": "Value", "dtype": "string"},
        "snippet": {"_type": "Value", "dtype": "int64"},
        "start_seconds": {"_type": "Value", "dtype": "float64"},
    }


def huggingface_metadata(label_names: list[str], max_length: int, n_mels: int) -> dict[str, str]:
    """Parquet schema metadata that ``datasets`` reads its features from."""
    features = datasets_features(label_names, max_length, n_mels)
    return {"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True)}


def load_hf_dataset(
    output: str, split: str | None = None, *, storage_options: dict[str, Any] | None = None, **load_kwargs: Any
):
    """The output as a Hugging Face ``DatasetDict`` (or one split's ``Dataset``), with ``label``
    a ClassLabel over the full ``labels.json``.

    Plain ``load_dataset("parquet", data_files=...)`` takes the features of the
    first file it opens; after a rerun appended a new label, shards written
    before it name fewer labels. Passing the features from ``labels.json``
    makes every split agree. Needs ``datasets`` (a dev extra, not a run-time
    dependency of the job).
    """
    import datasets

    from ..storage import Storage, fs_options, split_protocol

    storage = Storage(output, storage_options)
    manifest = storage.read_json("manifest.json")
    config = manifest["config"]
    if config.get("tensor_type", NESTED_LIST) != NESTED_LIST:
        raise ValueError(
            f"{output} was written with tensor_type {config['tensor_type']!r}, which datasets "
            "cannot read; rerun with tensor_type: nested_list"
        )
    names = storage.read_json("labels.json")
    features = datasets.Features.from_dict(datasets_features(names, config["max_length"], config["n_mels"]))
    files: dict[str, list[str]] = {}
    for record in manifest["files"]:
        if split is None or record["split"] == split:
            files.setdefault(record["split"], []).append(storage.url(record["path"]))
    if not files:
        raise ValueError(f"no data files in {output}" + (f" for split {split!r}" if split else ""))
    protocol = split_protocol(storage.root)[0]
    options = fs_options(protocol, storage_options) if protocol != "file" else None
    loaded = datasets.load_dataset(
        "parquet", data_files=files, features=features, storage_options=options, **load_kwargs
    )
    return loaded[split] if split is not None else loaded
