"""``ray-pipelines preview``: a PNG grid from any output with a 2-D or 3-D tensor column (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.features.sink import FeaturesSink
from ray_pipelines.jobs import preview
from ray_pipelines.storage import Storage

PNG = b"\x89PNG\r\n\x1a\n"


def bookkeeping(keys: list[str], index_column: str, split: str) -> dict[str, np.ndarray]:
    n = len(keys)
    return {
        "key": np.array(keys, dtype=object),
        index_column: np.arange(n) % 2,
        "error": np.array([""] * n, dtype=object),
        "split": np.array([split] * n, dtype=object),
        "samples_per_input": np.full(n, 2),
        "etag": np.array([""] * n, dtype=object),
    }


@pytest.fixture
def features_output(tmp_path):
    """A features-shaped output: input_values [frames=40, mels=16] as nested lists, labels in metadata."""
    rng = np.random.default_rng(0)
    metadata = {
        "ray_pipelines.axes": json.dumps({"input_values": ["frame", "mel"]}),
        "huggingface": json.dumps(
            {"info": {"features": {"label": {"_type": "ClassLabel", "names": ["jazz", "rock"]}}}}
        ),
    }
    sink = FeaturesSink(
        output=str(tmp_path),
        storage_options={},
        fingerprint="f" * 64,
        index_column="snippet",
        output_columns=["input_values", "label", "path", "snippet", "start_seconds"],
        schema_metadata=metadata,
    )
    for split in ("train", "test"):
        keys = [f"{split}/song{i // 2}.mp3" for i in range(6)]
        values = rng.standard_normal((6, 40, 16)).astype(np.float32)
        values[:, :, :4] += 5.0  # a bright band in the lowest mel bins
        sink.write_rows(
            {
                **bookkeeping(keys, "snippet", split),
                "input_values": values,
                "label": np.arange(6) % 2,
                "path": np.array(keys, dtype=object),
                "start_seconds": np.zeros(6),
            },
            rank=0,
        )
    return tmp_path


def test_preview_of_a_features_output(features_output, tmp_path):
    out = tmp_path / "grid.png"
    assert preview.main([str(features_output), "--n", "4", "--split", "train", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 20_000


def test_rows_titles_and_orientation(features_output):
    storage = Storage(str(features_output))
    files = preview.data_files(storage, "train")
    rows, schema = preview.read_rows(storage, files, "input_values", 5, shuffle=False, seed=0)
    assert rows["input_values"].shape == (5, 40, 16)
    assert preview.label_names(schema) == ["jazz", "rock"]
    assert preview.title_of(rows, 1, ["jazz", "rock"]) == "train/song0.mp3\nsnippet 1\nlabel rock"
    image = preview.as_image(rows["input_values"][0], preview.column_axes(schema, "input_values"), False, 0)
    assert image.shape == (16, 40)  # frequency up, time across
    assert image[:4].mean() > image[4:].mean() + 3
    sample, _ = preview.read_rows(storage, files, "input_values", 3, shuffle=True, seed=1)
    assert len(sample["path"]) == 3


def test_preview_of_a_3d_tensor_output_without_manifest(tmp_path):
    """Augment-shaped rows: view1 / view2 [1, n_mels, frames] as fixed_shape_tensor."""
    rng = np.random.default_rng(1)
    sink = ShardSink(
        output=str(tmp_path / "aug"),
        storage_options={},
        fingerprint="a" * 64,
        index_column="version",
        output_columns=["key", "version", "view1", "view2"],
    )
    keys = [f"clip{i}.flac" for i in range(3)]
    sink.write_rows(
        {
            **bookkeeping(keys, "version", "train"),
            "view1": rng.standard_normal((3, 1, 24, 50)).astype(np.float32),
            "view2": rng.standard_normal((3, 1, 24, 50)).astype(np.float32),
        },
        rank=0,
    )
    files = preview.data_files(Storage(str(tmp_path / "aug")), None)  # no manifest.json: found on disk
    assert [rows for _, rows in files] == [3]
    png, shown = preview.preview(str(tmp_path / "aug"), n=6, column="view2")
    assert png[:8] == PNG and shown == 3
    with pytest.raises(SystemExit, match="not a 2-D or 3-D tensor"):
        preview.preview(str(tmp_path / "aug"), column="key")


def test_tensor_shapes_of_arrow_types():
    assert preview.tensor_shape(pa.fixed_shape_tensor(pa.float32(), [1, 4, 5])) == [1, 4, 5]
    assert preview.tensor_shape(pa.list_(pa.list_(pa.float32(), 3), 2)) == [2, 3]
    assert preview.tensor_shape(pa.list_(pa.string(), 2)) is None
    assert preview.tensor_shape(pa.int64()) is None
