"""How an output describes itself to Hugging Face ``datasets``: features, file metadata, dataset card.

Three places, one description (the ``datasets.Features.to_dict()`` form built
by :func:`datasets_features` from the Arrow schema the sink wrote):

- every Parquet file's schema metadata (key ``huggingface``), which
  ``load_dataset("parquet", data_files=...)`` reads (``ClassLabel`` names as
  known when the file was written);
- ``README.md`` next to the data, a dataset card whose YAML ``configs`` name
  every split's files (the seeds' split names, ``val`` and ``validate``,
  kept: ``load_dataset(<output dir>)`` without the card only knows
  train/validation/test folder names) and whose ``dataset_info`` gives the
  features: tensors of 2 to 5 dimensions as ``Array2D``..``Array5D`` (their
  ``with_format("numpy")`` batches are 51-232 times faster than nested
  lists': ``bench/formats.py``), ``ClassLabel`` with the full label list, and the row count of
  every split (checked by ``datasets`` when it loads; ``num_bytes`` is the
  Parquet files' size);
- ``dataset_info.json``, the same ``DatasetInfo``, for outputs on object
  storage: ``load_dataset`` takes a card only from a local folder, but
  ``datasets.DatasetInfo.from_directory("s3://...", storage_options=...)``
  reads this file (README.md shows the two lines).

Written by hand: ``datasets`` is not needed at run time (tests check every
form with ``datasets`` itself).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..storage import Storage
from .arrow import tensor_shape

CARD = "README.md"
INFO = "dataset_info.json"
ARRAY_DIMS = range(2, 6)  # datasets has Array2D .. Array5D


def value_dtype(arrow_type: pa.DataType) -> str:
    """The ``datasets`` dtype name of a scalar Arrow type (``float32``, not Arrow's ``float``)."""
    names = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}
    return names.get(arrow_type, str(arrow_type))


def feature_of(arrow_type: pa.DataType, class_names: list[str] | None = None) -> dict[str, Any]:
    """One column's feature: a ClassLabel when it has label names, ArrayND for 2-5 dimensional
    tensors, fixed-length Sequences for other tensors, else a Value."""
    if class_names is not None:
        return {"_type": "ClassLabel", "names": list(class_names)}
    described = tensor_shape(arrow_type)
    if described is None:
        return {"_type": "Value", "dtype": value_dtype(arrow_type)}
    shape, value_type = described
    if len(shape) in ARRAY_DIMS:
        return {"_type": f"Array{len(shape)}D", "shape": shape, "dtype": value_dtype(value_type)}
    feature: dict[str, Any] = {"_type": "Value", "dtype": value_dtype(value_type)}
    for size in reversed(shape):
        # "Sequence" with a length: read by datasets 2.x to 5.x alike (5.x maps it to List).
        feature = {"_type": "Sequence", "feature": feature, "length": int(size)}
    return feature


def datasets_features(schema: pa.Schema, class_labels: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The ``datasets.Features.to_dict()`` form of a table's columns."""
    class_labels = class_labels or {}
    return {field.name: feature_of(field.type, class_labels.get(field.name)) for field in schema}


def huggingface_metadata(schema: pa.Schema, class_labels: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Parquet schema metadata that ``datasets`` reads a file's features from."""
    features = datasets_features(schema, class_labels)
    return {"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True)}


def yaml_feature(name: str, feature: dict[str, Any]) -> dict[str, Any]:
    """A feature in the card's YAML list form (what ``Features._to_yaml_list`` writes)."""

    def inner(f: dict[str, Any]) -> dict[str, Any]:
        kind = f["_type"]
        if kind == "Value":
            return {"dtype": f["dtype"]}
        if kind == "ClassLabel":
            return {"dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(f["names"])}}}}
        if kind == "Sequence":
            child = inner(f["feature"])
            value = child["dtype"] if list(child) == ["dtype"] and isinstance(child["dtype"], str) else child
            return {"sequence": value, "length": f["length"]}
        dims = kind[len("Array") : -1]  # "Array3D" -> array3_d
        return {"dtype": {f"array{dims}_d": {"shape": list(f["shape"]), "dtype": f["dtype"]}}}

    return {"name": name, **inner(feature)}


def split_name(folder: str) -> str:
    """The split name ``datasets`` accepts (``\\w+``) for a split folder; files at the root: ``train``."""
    return re.sub(r"\W", "_", folder) if folder else "train"


def dataset_card(job: str, features: dict[str, Any], splits: dict[str, tuple[int, int]], fingerprint: str) -> str:
    """README.md: YAML ``configs`` (split -> files) and ``dataset_info``, then a short text."""
    configs = [
        {"split": split_name(folder), "path": f"{folder}/part-*.parquet" if folder else "part-*.parquet"}
        for folder in sorted(splits)
    ]
    header = {
        "configs": [{"config_name": "default", "data_files": configs}],
        "dataset_info": {
            "features": [yaml_feature(name, feature) for name, feature in features.items()],
            "splits": [
                {"name": split_name(f), "num_bytes": size, "num_examples": rows}
                for f, (rows, size) in sorted(splits.items())
            ],
        },
    }
    files = {entry["split"]: entry["path"] for entry in configs}  # the card's object-storage lines name them
    first = "train" if "train" in map(split_name, splits) else split_name(sorted(splits)[0])
    tensors = [f"`{name}`" for name, f in features.items() if f["_type"].startswith(("Array", "Sequence"))]
    # Without tensor columns (the score job's), the lines about their shape would describe nothing.
    tensor_line = (
        f"Tensor columns ({', '.join(tensors)}) are nested fixed-size lists: every reader keeps their shape.\n"
        if tensors
        else ""
    )
    load_lines = (
        f"""ds = load_dataset("<this folder>")                 # every split, arrays with their shape
rows = ds["{first}"].with_format("numpy")[:8]      # numpy arrays [8, *shape]"""
        if tensors
        else f"""ds = load_dataset("<this folder>")                 # every split
rows = ds["{first}"][:8]                             # the first 8 rows: a list of values per column"""
    )
    body = f"""
# ray-pipelines `{job}` output

Written by the `{job}` job of ray-pipelines (config fingerprint `{fingerprint[:12]}`).
Splits: {", ".join(f"`{split_name(f)}` ({rows} rows)" for f, (rows, _) in sorted(splits.items()))}.
{tensor_line}
```python
from datasets import load_dataset
{load_lines}
```

From object storage (`load_dataset` reads this card only from a local folder):

```python
info = datasets.DatasetInfo.from_directory("s3://bucket/out", storage_options=so)   # {INFO}
files = {files!r}
ds = datasets.load_dataset("parquet", data_files={{s: f"s3://bucket/out/{{f}}" for s, f in files.items()}},
                           features=info.features, storage_options=dict(so))   # datasets adds to it
```
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body


def empty_dataset_card(job: str, fingerprint: str) -> str:
    """README.md of an output with no rows yet: without a card, ``load_dataset(output)`` loaded ``errors.jsonl``
    as the data; with this one it finds no data files (``DataFilesNotFoundError``)."""
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "part-*.parquet"}]}]}
    body = f"""
# ray-pipelines `{job}` output

Written by the `{job}` job of ray-pipelines (config fingerprint `{fingerprint[:12]}`).
No rows yet: every input its runs took is an error row (`errors.jsonl`; `manifest.json` names the most common
reasons) or none was selected. A run that writes rows rewrites this card.
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body


def dataset_info(features: dict[str, Any], splits: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``dataset_info.json``: what ``datasets.DatasetInfo.from_directory`` reads."""
    return {
        "features": features,
        "splits": {
            split_name(f): {"name": split_name(f), "num_bytes": size, "num_examples": rows}
            for f, (rows, size) in sorted(splits.items())
        },
    }


def parquet_splits(files: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(rows, bytes) per split folder over a manifest's Parquet files."""
    splits: dict[str, tuple[int, int]] = {}
    for record in files:
        if record["path"].endswith(".parquet"):
            rows, size = splits.get(record.get("split", ""), (0, 0))
            splits[record.get("split", "")] = (rows + int(record["rows"]), size + int(record["bytes"]))
    return splits


def write_dataset_card(
    storage: Storage,
    manifest: dict[str, Any],
    job: str,
    class_labels: dict[str, list[str]] | None = None,
    writes_parquet: bool = True,
) -> bool:
    """README.md and dataset_info.json for a committed output's Parquet files. The features come from the
    schema of a written file, so they are exactly what the files hold. Without Parquet files: nothing for a
    layout of none (the encode job's stable-audio-tools layout), else a card saying there are no rows, and no
    dataset_info.json (an earlier run's would count rows that are gone)."""
    files = [f for f in manifest.get("files", []) if f["path"].endswith(".parquet")]
    if not files:
        if writes_parquet:
            storage.write_bytes(CARD, empty_dataset_card(job, manifest.get("fingerprint", "")).encode())
            if storage.exists(INFO):
                storage.remove(INFO)
        return False
    with storage.fs.open(storage.abspath(files[0]["path"]), "rb") as f:
        schema = pq.read_schema(f)
    features = datasets_features(schema, class_labels)
    splits = parquet_splits(files)
    storage.write_bytes(CARD, dataset_card(job, features, splits, manifest.get("fingerprint", "")).encode())
    storage.write_bytes(INFO, json.dumps(dataset_info(features, splits), indent=1).encode())
    return True
