"""A reader's index kept in a cache folder: read there instead of every file's footer, the same reader."""

from __future__ import annotations

import io
import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import ray_pipelines.readers.index_cache as index_cache
import ray_pipelines.readers.parquet as parquet_module
import ray_pipelines.readers.rowgroups as rowgroups_module
from ray_pipelines.engine.arrow import open_parquet
from ray_pipelines.readers import ContrastiveViews, OutputRows, list_shards
from tests.test_readers import CLIPS, ROWS, assert_same_index, write_rows, write_views

pytestmark = pytest.mark.usefixtures("small_tensor_pages")


@pytest.fixture
def footer_reads(monkeypatch):
    """How many times a reader read its files' footers (all but the first file's: ``footer_batches``)."""
    calls = []
    real = parquet_module.footer_batches

    def counting(files, *args, **kwargs):
        calls.append(len(files))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(parquet_module, "footer_batches", counting)
    monkeypatch.setattr(rowgroups_module, "FOOTER_BATCH", 2)  # several batches, as on a large output
    return calls


def cache_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def epochs(dataset, workers: int) -> list[list[int]]:
    """Each epoch's items (view1's first bin: 10 * clip + version) in the order read."""
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        orders.append([int(v) for view1, _ in loader for v in view1[:, 0, 0, 0]])
    return orders


def test_contrastive_views_from_the_cache_are_the_views_from_the_footers(tmp_path, footer_reads):
    out = write_views(tmp_path / "out", nested=True, one_row_groups=True)
    cache = tmp_path / "cache"
    plain = ContrastiveViews(str(out), "train", seed=5)
    assert footer_reads == [len(plain.files)] and len(plain.files) > 2 and cache_files(cache) == []
    made = ContrastiveViews(str(out), "train", seed=5, index_cache=str(cache))
    assert len(footer_reads) == 2 and len(cache_files(cache)) == 1  # made from the footers, then kept
    cached = ContrastiveViews(str(out), "train", seed=5, index_cache=str(cache))
    assert len(footer_reads) == 2  # no footer read but the first file's
    for reader in (made, cached):
        assert_same_index(plain, reader)
        assert reader.keys.equals(plain.keys) and reader.clips() == CLIPS
        assert np.array_equal(reader._rows_by_clip, plain._rows_by_clip)
        assert np.array_equal(reader._versions_by_clip, plain._versions_by_clip)
        assert [reader.version_for(c, 4) for c in range(CLIPS)] == [plain.version_for(c, 4) for c in range(CLIPS)]
    expected = epochs(plain, workers=0)
    assert sorted(expected[0]) == sorted(10 * c + plain.version_for(c, 0) for c in range(CLIPS))
    assert epochs(cached, workers=0) == expected
    assert epochs(cached, workers=2) == epochs(plain, workers=2)  # in DataLoader workers too (pickled)


def test_rows_from_the_cache_are_the_rows_from_the_footers(tmp_path, footer_reads, monkeypatch):
    out = write_rows(tmp_path / "out", nested=True, one_row_groups=True)
    cache = tmp_path / "cache"

    def reader(**kwargs):
        return OutputRows(str(out), as_dict=True, shuffle=True, seed=2, batch_size=7, **kwargs)

    plain = reader()
    reader(index_cache=str(cache))
    opened = []
    monkeypatch.setattr(rowgroups_module, "open_parquet", lambda *args: opened.append(args) or open_parquet(*args))
    cached = reader(index_cache=str(cache))
    assert len(footer_reads) == 2 and len(cache_files(cache)) == 1
    assert_same_index(plain, cached)
    # The small columns kept as every file's were, from the cache: no file opened for them.
    assert cached.reader.kept_columns == plain.reader.kept_columns == {"key", "index"}
    assert opened == [] and len(cached.reader._kept) == len(plain.files)
    assert all(cached.reader._kept[f].equals(plain.reader._kept[f]) for f in range(len(plain.files)))
    for epoch in (0, 1):
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        got, want = list(cached), list(plain)
        assert [b["key"] for b in got] == [b["key"] for b in want]
        assert all(torch.equal(g["x"], w["x"]) for g, w in zip(got, want))
        assert sum(len(b["key"]) for b in got) == ROWS


def test_a_changed_output_is_not_read_from_an_older_cache(tmp_path, footer_reads):
    out = write_rows(tmp_path / "out", nested=True, one_row_groups=True)
    cache = tmp_path / "cache"
    files = list_shards(str(out), "train")
    parquet_module.ShardRows(files, index_cache=str(cache))
    (first,) = cache_files(cache)
    # A file less: another index, which replaces the folder's older one (one file per reader and folder).
    fewer = parquet_module.ShardRows(files[:-1], index_cache=str(cache))
    assert len(footer_reads) == 2 and len(cache_files(cache)) == 1 and cache_files(cache) != [first]
    assert fewer.index.num_rows < ROWS and fewer.index.file.max() == len(files) - 2
    # Other columns: other small columns kept, so a cache file of their own beside it (the same index in it).
    keys = parquet_module.ShardRows(files, ["key", "x"], index_cache=str(cache))
    assert len(footer_reads) == 3 and len(cache_files(cache)) == 2 and keys.reader.kept_columns == {"key"}
    again = parquet_module.ShardRows(files, ["key", "x"], index_cache=str(cache))
    assert len(footer_reads) == 3 and again.reader._kept[0].column_names == ["key"]
    # A file rewritten (fewer rows: another size): the index is made again from the footers.
    table = pq.read_table(files[1])
    pq.write_table(table.slice(0, 3), files[1], row_group_size=1)
    rewritten = parquet_module.ShardRows(files, index_cache=str(cache))
    assert len(footer_reads) == 4 and len(cache_files(cache)) == 2
    assert rewritten.index.num_rows == ROWS - table.num_rows + 3
    assert_same_index(parquet_module.ShardRows(files), rewritten)


def test_a_cache_or_output_url_nothing_here_serves_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """``index_cache="s3:/bucket/cache"`` (one slash) made a folder named ``s3:`` in the working directory."""
    out = write_rows(tmp_path / "out", nested=True, one_row_groups=True)
    files = list_shards(str(out), "train")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^index_cache s3:/bucket/cache: a local folder named s3:, not a URL; did"):
        parquet_module.ShardRows(files, index_cache="s3:/bucket/cache")
    with pytest.raises(ValueError, match=r"^index_cache https://host/cache: https:// is read-only here"):
        parquet_module.ShardRows(files, index_cache="https://host/cache")
    with pytest.raises(ValueError, match=r"^gs://bucket/out: gs:// needs a package that is not installed"):
        OutputRows("gs://bucket/out", "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_nightly_output_keeps_one_cache_file_per_split(tmp_path, footer_reads):
    """An output that grows every night: each night's readers make one new cache file per split, and
    the split's file of the night before is removed; the other split's is kept."""
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    train = write_views(out, nested=True, one_row_groups=True)
    valid = tmp_path / "valid-split"
    shutil.copytree(out / "train", valid)
    assert ContrastiveViews(str(train), "train", index_cache=str(cache)).clips() == CLIPS
    valid_files = sorted(str(p) for p in valid.rglob("*.parquet"))
    parquet_module.ShardRows(valid_files, index_cache=str(cache))
    before = cache_files(cache)
    assert len(before) == 2
    # The next night: the train split has one more file (a copy of one of its files under a new name).
    added = sorted((out / "train").rglob("*.parquet"))[0]
    shutil.copy(added, added.with_name("part-night-2.parquet"))
    manifest = json.loads((out / "manifest.json").read_text())
    (record,) = [f for f in manifest["files"] if f["path"].endswith(added.name)]
    manifest["files"].append({**record, "path": record["path"].replace(added.name, "part-night-2.parquet")})
    (out / "manifest.json").write_text(json.dumps(manifest))
    grown = ContrastiveViews(str(train), "train", index_cache=str(cache))
    after = cache_files(cache)
    assert len(after) == 2 and len(set(after) - set(before)) == 1  # the train file replaced, the valid one kept
    assert grown.index.num_rows == sum(pq.ParquetFile(f).metadata.num_rows for f in grown.files)
    assert len(grown.files) == len(valid_files) + 1
    assert parquet_module.ShardRows(valid_files, index_cache=str(cache)).index.num_rows > 0
    assert cache_files(cache) == after and len(footer_reads) == 3  # the valid split's file was read


def test_one_process_per_node_writes_a_local_cache(tmp_path, footer_reads, monkeypatch):
    """torchrun's LOCAL_RANK says which process of a node writes a missing local cache file; the others
    make the same reader from the footers and write nothing."""
    out = write_views(tmp_path / "out", nested=True, one_row_groups=True)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOCAL_RANK", "1")
    second = ContrastiveViews(str(out), "train", seed=3, rank=1, world_size=2, index_cache=str(cache))
    assert cache_files(cache) == [] and second.clips() == CLIPS
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = ContrastiveViews(str(out), "train", seed=3, rank=0, world_size=2, index_cache=str(cache))
    assert len(cache_files(cache)) == 1 and len(footer_reads) == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    cached = ContrastiveViews(str(out), "train", seed=3, rank=1, world_size=2, index_cache=str(cache))
    assert len(footer_reads) == 2 and cached.keys.equals(first.keys)  # read by every rank
    assert sorted(epochs(cached, workers=0)[0] + epochs(first, workers=0)[0]) == sorted(
        10 * c + first.version_for(c, 0) for c in range(CLIPS)
    )


def test_a_damaged_cache_file_is_said_and_made_again(tmp_path, footer_reads):
    out = write_views(tmp_path / "out", nested=True, one_row_groups=True)
    cache = tmp_path / "cache"
    plain = ContrastiveViews(str(out), "train", seed=1, index_cache=str(cache))
    (name,) = cache_files(cache)
    saved = (cache / name).read_bytes()
    (cache / name).write_bytes(saved[: len(saved) // 2])  # cut short
    with pytest.warns(UserWarning, match="not read"):
        again = ContrastiveViews(str(out), "train", seed=1, index_cache=str(cache))
    assert len(footer_reads) == 2 and again.keys.equals(plain.keys)
    assert (cache / name).read_bytes() == saved  # written whole again
    # A whole file whose clips do not fit its index (one row's number too large) is not used either.
    with np.load(io.BytesIO(saved)) as arrays:
        damaged = {key: arrays[key] for key in arrays.files}
    damaged["extra.rows_by_clip"] = damaged["extra.rows_by_clip"] + 1
    with open(cache / name, "wb") as f:
        np.savez(f, **damaged)
    with pytest.warns(UserWarning, match="not used.*clips do not fit"):
        checked = ContrastiveViews(str(out), "train", seed=1, index_cache=str(cache))
    assert len(footer_reads) == 3 and np.array_equal(checked._rows_by_clip, plain._rows_by_clip)
    ContrastiveViews(str(out), "train", seed=1, index_cache=str(cache))
    assert len(footer_reads) == 3  # the file written again is read


def test_a_cache_folder_that_cannot_be_written_is_said_and_the_reader_made(tmp_path, footer_reads):
    out = write_views(tmp_path / "out", nested=True, one_row_groups=True)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="not written"):
        reader = ContrastiveViews(str(out), "train", seed=1, index_cache=str(blocked / "cache"))
    assert reader.clips() == CLIPS and len(footer_reads) == 1
    assert sorted(epochs(reader, workers=0)[0]) == sorted(10 * c + reader.version_for(c, 0) for c in range(CLIPS))


@pytest.mark.parametrize("remote", [True, False], ids=["object store", "local"])
def test_an_index_of_no_row_groups_goes_through_a_cache_file(remote):
    """An output with no row groups (an empty split): its cache file makes the same empty index. An empty
    array's strides are those of a local index's one zero held once, so ``has_ranges`` is true for it:
    its no byte ranges are written, and an object store's reader finds them."""
    schema = pa.schema([("x", pa.float32())])
    index = rowgroups_module.build_index(["a.parquet"], [10], [], schema, remote=remote)
    assert index.has_ranges and len(index.start) == len(index.stop) == 0
    arrays = index_cache.index_arrays(index, {}, None)
    assert len(arrays["index.start"]) == len(arrays["index.stop"]) == 0
    back = index_cache.index_from_arrays(arrays, ["a.parquet"], [10], remote=remote).index
    assert back.num_rows == 0 and back.schema == schema and len(back.file) == len(back.start) == 0


def test_a_local_index_holds_no_byte_ranges_and_an_object_stores_does(tmp_path):
    """One zero held for every row group locally (``has_ranges`` false, so through pickling and out of a
    cache file, which stores no ranges for it); an object store's ranges kept as read, pickled whole."""
    out = write_rows(tmp_path / "out", nested=True, one_row_groups=True)
    local = OutputRows(str(out), shuffle=False).index
    groups = len(local.rows)
    assert groups > 1 and not local.has_ranges and not pickle.loads(pickle.dumps(local)).has_ranges
    arrays = index_cache.index_arrays(local, {}, None)
    assert "index.start" not in arrays and "index.stop" not in arrays
    assert not index_cache.index_from_arrays(arrays, local.files, local.sizes, remote=False).index.has_ranges
    with pytest.raises(ValueError, match="no start, stop"):  # an object store's reader needs the ranges
        index_cache.index_from_arrays(arrays, local.files, local.sizes, remote=True)
    ranges = {"index.start": np.arange(groups, dtype=np.int64), "index.stop": np.arange(groups, dtype=np.int64) + 1}
    remote = index_cache.index_from_arrays({**arrays, **ranges}, local.files, local.sizes, remote=True).index
    assert remote.has_ranges and pickle.loads(pickle.dumps(remote)).stop.tolist() == list(range(1, groups + 1))
