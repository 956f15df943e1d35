"""The readers' epochs: every item once across workers and ranks, orders, epochs, both tensor layouts.

Outputs are written by the project's own ShardSink and committed as a job
commits them (bench.readers.write_output); tensors in both representations
an output may hold: nested fixed-size lists (what the sink writes, and what
Hugging Face datasets, polars and DuckDB read with their shape) and
``arrow.fixed_shape_tensor`` (outputs written before, format 1).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
import warnings
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import ray_pipelines.engine.arrow as arrow_module
import ray_pipelines.engine.sink as sink_module
import ray_pipelines.readers.batches as batches_module
import ray_pipelines.readers.parquet as parquet_module
import ray_pipelines.readers.rowgroups as rowgroups_module
from bench.readers import write_output
from ray_pipelines.engine.arrow import column_to_numpy, tensor_shape
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.readers import (
    ContrastiveViews,
    FeatureSnippets,
    OutputRows,
    ShardRows,
    TeacherCache,
    list_shards,
    open_encoded,
)
from ray_pipelines.readers.contrastive import KeyedRows, sorted_unique, string_array
from ray_pipelines.readers.epoch import FORKED_FROM_RAY, EpochChanged
from ray_pipelines.readers.errors import UnreadableFile
from tests.audio_helpers import REPO

# Every test here reads tensors as real outputs are read: decoded from their pages.
pytestmark = pytest.mark.usefixtures("small_tensor_pages")

ROWS = 60  # generic output: 60 rows in 6 files
CLIPS, VERSIONS = 12, 3  # contrastive output: 12 clips x 3 versions in 4 files


def fixed_shape_tensors(table: pa.Table) -> pa.Table:
    """The table with every tensor column as ``arrow.fixed_shape_tensor`` (what outputs of format 1 hold)."""
    columns = {}
    for field, column in zip(table.schema, table.columns):
        if tensor_shape(field.type) is not None:
            column = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(column_to_numpy(column)))
        columns[field.name] = column
    return pa.table(columns).replace_schema_metadata(table.schema.metadata)


class FixedShapeTensorSink(ShardSink):
    def make_table(self, rows):
        return fixed_shape_tensors(super().make_table(rows))


def write(output: Path, job: str, rows: dict, *, nested: bool, one_row_groups: bool, **kwargs) -> Path:
    """Commit ``rows`` in one of the layouts: tensors as nested fixed-size lists (what the sink writes) or as
    ``fixed_shape_tensor`` (earlier outputs); a row group per row, or per file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sink_module, "TARGET_ROW_GROUP_BYTES", 1 if one_row_groups else 1 << 30)
        write_output(output, job, rows, sink_class=None if nested else FixedShapeTensorSink, **kwargs)
    return output


LAYOUTS = [
    pytest.param((False, False), id="fixed_shape_tensor, a row group per file"),
    pytest.param((True, True), id="nested lists, a row group per row"),
]


def generic_rows() -> dict:
    ids = np.arange(ROWS)
    return {
        "key": np.array([f"k{i:03d}" for i in ids], dtype=object),
        "index": np.zeros(ROWS, dtype=np.int64),
        "x": np.repeat(ids[:, None], 4, axis=1).astype(np.float32),  # x = [id, id, id, id]
        "split": np.full(ROWS, "train", dtype=object),
    }


def write_rows(out: Path, nested: bool, one_row_groups: bool) -> Path:
    return write(
        out,
        "rows",
        generic_rows(),
        nested=nested,
        one_row_groups=one_row_groups,
        index_column="index",
        output_columns=["key", "index", "x"],
        rows_per_block=10,
    )


@pytest.fixture(scope="module", params=LAYOUTS)
def rows_output(request, tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("rows") / "out", *request.param)


def contrastive_rows() -> dict:
    """Noise views [1, 32, 24] whose first bin is 10 * clip + version (an item says which row it is),
    view2 = -view1."""
    clip = np.repeat(np.arange(CLIPS), VERSIONS)
    version = np.tile(np.arange(VERSIONS), CLIPS)
    view1 = np.random.default_rng(0).standard_normal((len(clip), 1, 32, 24)).astype(np.float32)
    view1[:, 0, 0, 0] = 10 * clip + version
    return {
        "key": np.array([f"clip{c:02d}.flac" for c in clip], dtype=object),
        "version": version.astype(np.int64),
        "view1": view1,
        "view2": -view1,
        "split": np.full(len(clip), "train", dtype=object),
    }


def write_views(out: Path, nested: bool, one_row_groups: bool) -> Path:
    return write(
        out,
        "augment",
        contrastive_rows(),
        nested=nested,
        one_row_groups=one_row_groups,
        index_column="version",
        output_columns=["key", "version", "view1", "view2"],
        rows_per_block=9,
    )


@pytest.fixture(scope="module", params=LAYOUTS)
def views_output(request, tmp_path_factory) -> Path:
    return write_views(tmp_path_factory.mktemp("views") / "out", *request.param)


def assert_same_index(a, b) -> None:
    """Two readers' row-group indexes are the same: every array, the schema, the files."""
    for name in ("file", "group", "rows", "first_row", "start", "stop", "decoded_bytes"):
        assert np.array_equal(getattr(a.index, name), getattr(b.index, name)), name
    assert a.index.schema.equals(b.index.schema) and a.index.files == b.index.files


def ids(batches) -> list[int]:
    return [int(v) for batch in batches for v in batch[0][:, 0]]


def read_ids(dataset, workers: int = 0, batch_size: int = 4, **kwargs) -> list[int]:
    return ids(DataLoader(dataset, batch_size=batch_size, num_workers=workers, **kwargs))


def test_layouts_are_what_the_tests_claim(rows_output):
    files = list_shards(str(rows_output), "train")
    assert len(files) == 6
    md = pq.ParquetFile(files[0]).metadata
    x_type = pq.read_schema(files[0]).field("x").type
    if isinstance(x_type, pa.FixedShapeTensorType):
        assert md.num_row_groups == 1
    else:
        assert pa.types.is_fixed_size_list(x_type) and md.num_row_groups == md.num_rows == 10
    # both layouts' tensors are read from their pages
    assert list(ShardRows(files, ["x"]).tensor_leaves) == ["x"]


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_row_once_per_epoch_across_workers_and_ranks(rows_output, world_size):
    files = list_shards(str(rows_output), "train")
    for epoch in (0, 1):
        seen, lengths = [], []
        for rank in range(world_size):
            dataset = ShardRows(files, ["x"], shuffle=True, seed=7, rank=rank, world_size=world_size, shuffle_buffer=4)
            dataset.set_epoch(epoch)
            got = ids(DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_x))
            assert len(got) == len(dataset)
            seen += got
            lengths.append(len(got))
        assert sorted(seen) == list(range(ROWS))  # each row exactly once, on exactly one rank
        assert max(lengths) - min(lengths) <= 1


def collate_x(rows):
    return (torch.stack([torch.from_numpy(r["x"]) for r in rows]),)


def test_order_changes_with_epoch_and_repeats_for_a_seed(rows_output):
    def order(seed, epoch):
        dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, seed=seed, shuffle_buffer=8)
        dataset.set_epoch(epoch)
        return read_ids(dataset, workers=2)

    first = order(seed=1, epoch=0)
    assert sorted(first) == list(range(ROWS))
    assert first == order(seed=1, epoch=0)  # identical seeds, identical orders
    assert first != order(seed=1, epoch=1) and first != order(seed=2, epoch=0)
    in_files = [int(k[1:]) for f in list_shards(str(rows_output), "train") for k in pq.read_table(f)["key"].to_pylist()]
    assert read_ids(OutputRows(str(rows_output), fields=("x",))) == in_files  # unshuffled: the files' order
    # NumPy draws the orders: a negative seed or epoch was its "expected non-negative integer", a float
    # epoch cut to an int without a word
    with pytest.raises(ValueError, match=r"^seed must be 0 or more, got -1$"):
        OutputRows(str(rows_output), fields=("x",), seed=-1)
    dataset = OutputRows(str(rows_output), fields=("x",), seed=np.int64(1))
    with pytest.raises(ValueError, match=r"^epoch must be 0 or more, got -1$"):
        dataset.set_epoch(-1)
    with pytest.raises(TypeError, match=r"^epoch must be an integer, got 1.5$"):
        dataset.set_epoch(1.5)
    dataset.set_epoch(np.int32(2))
    assert (dataset.seed, dataset.epoch) == (1, 2)


def test_items_of_several_files_interleave_in_the_first_batch(rows_output):
    # Even with a buffer of 4 rows: a window holds several chunks, so several files.
    dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, seed=3, shuffle_buffer=4)
    first_batch = read_ids(dataset, batch_size=8)[:8]
    files_of = {i // 10 for i in first_batch}  # a file holds 10 consecutive ids
    assert len(files_of) >= 3


def test_contrastive_views_rotate_versions_with_persistent_workers(views_output):
    dataset = ContrastiveViews(str(views_output), "train", seed=5)
    assert len(dataset) == CLIPS == dataset.clips()
    loader = DataLoader(dataset, batch_size=5, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in range(3):
        dataset.set_epoch(epoch)  # reaches the workers started in epoch 0
        values = [int(v[0, 0, 0]) for view1, view2 in loader for v in view1]
        assert sorted(v // 10 for v in values) == list(range(CLIPS))  # every clip once
        assert all(v % 10 == dataset.version_for(v // 10, epoch) for v in values)
        orders.append(values)
    # every clip shows another version in each of the three epochs, and the order changes
    by_clip = [{v // 10: v % 10 for v in o} for o in orders]
    assert all(len({versions[c] for versions in by_clip}) == VERSIONS for c in range(CLIPS))
    assert orders[0] != orders[1]


def test_contrastive_views_single_item(views_output):
    dataset = ContrastiveViews(str(views_output), "train", seed=5)
    dataset.set_epoch(4)
    view1, view2 = dataset[3]
    assert view1.shape == (1, 32, 24) and view1.dtype == torch.float32
    assert float(view1[0, 0, 0]) == 30 + dataset.version_for(3) and torch.equal(view2, -view1)
    assert dataset.keys.to_pylist() == [f"clip{c:02d}.flac" for c in range(CLIPS)]  # clip 3 is keys[3]
    by_path = ContrastiveViews(views_output, "train", seed=5)  # a Path (was a TypeError from deep inside)
    by_path.set_epoch(4)
    assert [torch.equal(a, b) for a, b in zip(by_path[3], (view1, view2))] == [True, True]


def test_a_jobs_reader_refuses_another_jobs_output_by_name(views_output, rows_output):
    augment = str(views_output)
    for read_as, job in ((TeacherCache, "teacher"), (FeatureSnippets, "features"), (open_encoded, "encode")):
        with pytest.raises(ValueError) as error:
            read_as(augment) if read_as is open_encoded else read_as(augment, "train")
        assert str(error.value) == (
            f"{augment} is the augment job's output, not the {job} job's: "
            "read it with ContrastiveViews (or OutputRows, which reads any job's rows)"
        )
    assert len(OutputRows(augment, "train", as_dict=True)) == CLIPS * VERSIONS  # any job's rows
    # either name picks the columns for either form (columns= for tuples was once ignored: every column came)
    version, key = next(iter(OutputRows(augment, "train", columns=["version", "key"])))
    assert version.dtype == torch.int64 and key.startswith("clip") and key.endswith(".flac")
    assert list(next(iter(OutputRows(augment, "train", fields=["key"], as_dict=True)))) == ["key"]
    with pytest.raises(ValueError, match=r"^fields=\('key',\) and columns=\('version',\) differ: give one of them$"):
        OutputRows(augment, "train", fields=["key"], columns=["version"])
    with pytest.raises(ValueError, match=r"is the rows job's output, not the augment job's: read it with OutputRows$"):
        ContrastiveViews(str(rows_output), "train")


def test_an_output_without_rows_says_why_not_that_the_split_is_missing(tmp_path):
    """A committed output whose inputs were all error rows, or all left out by a keep list."""
    manifest = {"job": "augment", "files": [], "counts": {"listed": 0, "errors": 0}, "inputs": {"left_out": 5}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as said:
        ContrastiveViews(str(tmp_path), "train")
    assert str(said.value) == (
        f"{tmp_path} has no rows at all (counts: 0 inputs selected, 0 with errors (errors.jsonl), "
        "5 left out by keep/ignore lists or limit)"
    )


def test_a_reader_of_an_incomplete_output_says_so(tmp_path):
    """An output whose last run ended 3 (inputs to retry, no _SUCCESS) is read, with a warning: a training run
    on it would otherwise miss those inputs' rows without a word."""
    output = write_rows(tmp_path / "out", nested=True, one_row_groups=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(OutputRows(str(output), fields=("x",))) == ROWS  # complete: nothing to say
    manifest = json.loads((output / "manifest.json").read_text())
    manifest["complete"], manifest["counts"]["to_retry"] = False, 3
    (output / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(RuntimeWarning) as said:
        assert len(OutputRows(str(output), fields=("x",))) == ROWS
    assert [str(w.message) for w in said] == [
        f"{output} is incomplete: its last run left 3 inputs to retry (no _SUCCESS), whose rows are not read: "
        "rerun the job to finish it; reading the rows committed"
    ]


def test_a_reader_given_a_folder_that_is_not_an_output_says_what_it_is(rows_output, tmp_path):
    """The easy mistakes: a typo, a split's folder for the output, manifest.json itself."""
    said = {
        given: pytest.raises(FileNotFoundError, OutputRows, given).value.args[0]
        for given in (str(tmp_path / "nope"), str(rows_output / "train"), str(rows_output / "manifest.json"))
    }
    assert said == {
        f"{tmp_path / 'nope'}": f"{tmp_path / 'nope'} not found",
        f"{rows_output / 'train'}": f"{rows_output / 'train'} is a folder inside the output {rows_output}: give the "
        "output's root (the folder holding manifest.json), and a split as split=",
        f"{rows_output / 'manifest.json'}": f"{rows_output / 'manifest.json'} is a file: give the job's output folder",
    }
    with pytest.raises(FileNotFoundError, match=r"^\S+ has no manifest.json: no run has committed it yet .*rerun"):
        OutputRows(str(tmp_path))  # a folder that is there: the job never committed it


def test_clips_are_numbered_in_the_order_numpy_sorts_their_keys():
    """ContrastiveViews numbers clips by their sorted keys in Arrow (no Python string per row): the order and
    numbers np.unique gives, non-ASCII keys included (UTF-8's byte order is the code points' order)."""
    keys = ["b.wav", "é.flac", "a.wav", "Z.wav", "日本.wav", "", "b.wav", "😀.mp3", "e\u0301.flac", "a.wav", "ß"]
    unique, position = sorted_unique(string_array(keys))
    expected, inverse = np.unique(np.array(keys, dtype=object), return_inverse=True)
    assert unique.to_pylist() == expected.tolist() and len(unique) == 9
    assert position.tolist() == inverse.tolist()
    # A batch of files at a time (a key in several of them), numbered together.
    parts = [KeyedRows.of(string_array(keys[a:b]), np.arange(a, b)) for a, b in ((0, 7), (7, 9), (9, 11))]
    assert len(parts[0].distinct) == 6 and len(parts[2].distinct) == 2  # "b.wav" twice in one, "a.wav" in two
    numbered, number = KeyedRows.numbered(parts)
    assert numbered.equals(unique) and number.tolist() == inverse.tolist()


def test_an_epoch_reads_only_the_row_groups_of_its_versions(views_output):
    dataset = ContrastiveViews(str(views_output), "train", seed=0)
    one_row_groups = len(dataset.index) == CLIPS * VERSIONS
    read = []
    original = dataset.reader.read_with_tensors
    dataset.reader.read_with_tensors = lambda file, groups, *args: (
        read.append(len(groups)) or original(file, groups, *args)
    )
    assert sum(len(view1) for view1, _ in DataLoader(dataset, batch_size=4)) == CLIPS
    assert sum(read) == (CLIPS if one_row_groups else len(dataset.index))


class ReadThreadsSeen(torch.utils.data.IterableDataset):
    """Yields what local_read_threads says in the process that iterates it."""

    def __iter__(self):
        from ray_pipelines.readers.parquet import local_read_threads

        info = torch.utils.data.get_worker_info()
        if info is None or info.id == 0:
            yield local_read_threads()


def test_local_reads_take_a_second_thread_only_where_every_reader_process_has_three_cores(monkeypatch):
    """A core for the thread that fills batches and one for each of its two read threads."""
    from ray_pipelines.readers.parquet import local_read_threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    assert local_read_threads() == 2  # one process, 6 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: 2 ranks on this machine, 3 cores each
    assert local_read_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert local_read_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")
    assert local_read_threads() == 2  # read as one rank
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert local_read_threads() == 1  # one process on 2 cores: its two read threads would outnumber them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert local_read_threads() == 1
    # In DataLoader workers: every worker counts (forked workers inherit the patched affinity).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    for workers, expected in ((2, 2), (3, 1)):
        seen = list(DataLoader(ReadThreadsSeen(), batch_size=None, num_workers=workers, multiprocessing_context="fork"))
        assert seen == [expected]


def test_small_columns_are_read_once_per_process_and_only_when_they_fit(tmp_path, monkeypatch):
    """pyarrow reads a local output's small columns a whole file at a time, once, when the reader is made:
    no epoch reads them again (tensors come from their pages), and DataLoader workers forked after that
    share the tables; a pickled copy (forkserver, spawn) reads its own on first need. Kept only when
    every row of them fits in SMALL_COLUMNS_BYTES (measured on the first file's), and only the columns
    the reader yields."""
    import pickle

    files = list_shards(str(write_rows(tmp_path / "out", nested=True, one_row_groups=True)), "train")
    dataset = ShardRows(files, shuffle=True, seed=1)
    assert list(dataset.tensor_leaves) == ["x"] and dataset.reader.kept_columns == {"key", "index"}
    assert len(dataset.reader._kept) == len(files)  # read when the reader was made
    copied = pickle.loads(pickle.dumps(dataset))
    assert copied.reader._kept == {}

    def refused(*args, **kwargs):
        raise AssertionError("pyarrow opened a file for a kept column")

    monkeypatch.setattr(rowgroups_module.pq, "ParquetFile", refused)
    first = {int(row["x"][0]): row for row in dataset}
    assert len(first) == ROWS
    dataset.set_epoch(1)
    second = list(dataset)
    assert [int(row["x"][0]) for row in second] != list(first)  # another order, the same rows
    forked = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    for row in [*second, *forked]:  # forked workers read nothing either: they have the parent's tables
        expected = first[int(row["x"][0])]
        assert (row["key"], int(row["index"])) == (expected["key"], int(expected["index"]))
        assert row["key"] == f"k{int(row['x'][0]):03d}"
    assert ShardRows(files, columns=["x"]).reader.kept_columns == frozenset()  # nothing it would yield
    monkeypatch.undo()
    assert sorted(row["key"] for row in copied) == sorted(row["key"] for row in first.values())
    assert len(copied.reader._kept) == len(files)
    # Whether they fit is measured on the first file's columns (strings by their real length).
    first_file = ShardRows(files).reader._kept[0]  # the columns kept here (monkeypatch.undo: x is one)
    every_row = -(-first_file.nbytes * ROWS // first_file.num_rows)  # rounded up
    monkeypatch.setattr(parquet_module, "SMALL_COLUMNS_BYTES", ROWS * 8)  # not room for every row's key
    assert ShardRows(files).reader.kept_columns == frozenset()
    monkeypatch.setattr(parquet_module, "SMALL_COLUMNS_BYTES", every_row - 1)
    too_small = ShardRows(files)
    assert too_small.reader.kept_columns == frozenset() and too_small.reader._kept == {}
    assert sorted(row["key"] for row in too_small) == sorted(row["key"] for row in first.values())
    monkeypatch.setattr(parquet_module, "SMALL_COLUMNS_BYTES", every_row)
    assert len(ShardRows(files).reader._kept) == len(files)


@pytest.mark.parametrize("kept", [True, False])
def test_a_reader_is_made_holding_a_few_files_footers(tmp_path, monkeypatch, small_tensor_pages, kept):
    """Making a reader holds a batch of files' footers at a time (their bytes and tables: about 1-2.5 KB a
    row group, 55 GB for 10 million clips in five augment versions when every file's was held) and at most
    FOOTER_CACHE parsed footers and the first file's (1.4 MB each for a 128-row encode file; all of them
    were 11 GB for a million latents), each parsed at most once, whether the small columns are kept or not."""
    files = list_shards(str(write_rows(tmp_path / "out", nested=True, one_row_groups=True)), "train") * 3
    monkeypatch.setattr(rowgroups_module, "FOOTER_CACHE", 2)
    monkeypatch.setattr(rowgroups_module, "FOOTER_BATCH", 2)
    if not kept:
        monkeypatch.setattr(parquet_module, "SMALL_COLUMNS_BYTES", 0)
    parse, parsed = rowgroups_module.Footers.parse, rowgroups_module.Footers.parsed
    read_footers, footer_table = rowgroups_module.read_footers, rowgroups_module.footer_table
    calls: Counter[int] = Counter()
    held: list[int] = []  # parsed footers held, at each parse
    batches: list[weakref.ref] = []
    tables: list[weakref.ref] = []
    alive: list[tuple[int, int]] = []  # footers' batches and tables alive, at each batch read and table made

    def counted_parse(self, file):
        calls[file] += 1
        return parse(self, file)

    def watched_parsed(self, file):
        md = parsed(self, file)
        held.append(len(self._parsed))
        return md

    def held_now(refs: list[weakref.ref]) -> int:
        return sum(ref() is not None for ref in refs)

    def watched_read_footers(*args, **kwargs):
        alive.append((held_now(batches), held_now(tables)))
        footers = read_footers(*args, **kwargs)
        batches.append(weakref.ref(footers))
        return footers

    def watched_footer_table(raw):
        table = footer_table(raw)
        tables.append(weakref.ref(table))
        alive.append((held_now(batches), held_now(tables)))
        return table

    monkeypatch.setattr(rowgroups_module.Footers, "parse", counted_parse)
    monkeypatch.setattr(rowgroups_module.Footers, "parsed", watched_parsed)
    monkeypatch.setattr(rowgroups_module, "read_footers", watched_read_footers)
    monkeypatch.setattr(rowgroups_module, "footer_table", watched_footer_table)
    dataset = ShardRows(files, shuffle=True, seed=3)
    assert len(files) == 18 and bool(dataset.reader.kept_columns) == kept
    assert len(batches) == 9 and len(alive) == 9 + 18  # 2 files' footers a batch, a table each
    # While a batch is read and its tables made (in the background): the batch being used and the one
    # before it at most, and their tables (the last 2 files' too, kept: the last batch's).
    assert max(batch for batch, _ in alive) <= 2 and 4 <= max(table for _, table in alive) <= 6
    assert held and max(held) <= 3
    assert set(calls.values()) == {1}
    assert set(calls) == {0, 16, 17}  # the schema's, then the last FOOTER_CACHE (kept columns: pyarrow's own)
    assert sorted(dataset.reader._footers) == [16, 17] and sorted(dataset.reader._tables) == [16, 17]
    rows = list(dataset)
    assert sorted(int(row["x"][0]) for row in rows) == sorted(list(range(ROWS)) * 3)
    assert all(row["key"] == f"k{int(row['x'][0]):03d}" for row in rows)
    # Local files' byte ranges are never read: one zero held for all of them, and pickled as such.
    index = pickle.loads(pickle.dumps(dataset)).index
    assert not index.has_ranges and index.start.strides == index.stop.strides == (0,)
    assert len(index.start) == len(dataset.index)
    assert not index.start.any() and np.array_equal(index.rows, dataset.index.rows)


class ThreadsReading(io.FileIO):
    """A file that notes which threads read it."""

    def __init__(self, path, threads: set[int]):
        super().__init__(path, "rb")
        self.threads = threads

    def read(self, size=-1):
        self.threads.add(threading.get_ident())
        return super().read(size)

    def readinto(self, buffer):
        self.threads.add(threading.get_ident())
        return super().readinto(buffer)


def test_pyarrow_reads_the_chunks_in_the_readers_own_thread(tmp_path):
    """The readers (and the project's other Parquet reads) open files with arrow.open_parquet: no
    pre-buffering, so pyarrow reads each column chunk in the thread that asked, where by default it hands
    every chunk's read to Arrow's I/O threads and waits (two thread wake-ups per chunk: most of what a
    one-row group's small column costs)."""
    table = pa.table({"index": np.arange(64), "key": [f"k{i:03d}" for i in range(64)]})
    path = tmp_path / "one-row-groups.parquet"
    pq.write_table(table, path, row_group_size=1)
    for opener, handed_over in ((arrow_module.open_parquet, False), (pq.ParquetFile, True)):
        threads: set[int] = set()
        with ThreadsReading(path, threads) as f:
            read = opener(f).read_row_groups(list(range(64)), use_threads=False)
        assert read.equals(table)
        assert threading.get_ident() in threads
        assert (len(threads) > 1) == handed_over, opener  # pyarrow's default: what open_parquet turns off


def overwrite(path: str, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_damaged_file_is_named_with_pyarrows_reason(tmp_path, layout):
    """pyarrow's errors for a damaged file do not say which file; the readers' do, wherever it is read: its
    footer or small columns when the reader is made, a tensor page in a DataLoader worker, a file cut short
    since the reader was made (and then the sizes say so). A file that is whole again reads as before."""
    files = list_shards(str(write_rows(tmp_path / "out", *layout)), "train")
    damaged = files[2]
    original = Path(damaged).read_bytes()
    md = pq.read_metadata(damaged)
    leaf = {md.schema.column(i).path.split(".")[0]: i for i in range(md.num_columns)}
    x_page, key_page = (md.row_group(0).column(leaf[name]).data_page_offset for name in ("x", "key"))
    footer = len(original) - 8 - int.from_bytes(original[-8:-4], "little")

    dataset = ShardRows(files, shuffle=True, seed=1)
    overwrite(damaged, x_page + 2, b"\xff" * 30)  # after the reader was made: read in a worker
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(UnreadableFile, match=f"reading {re.escape(damaged)}: Couldn't deserialize thrift"):
        list(loader)
    os.truncate(damaged, x_page + 4)
    sizes = f"({len(original)} bytes when the reader was made, {x_page + 4} now)"
    with pytest.raises(UnreadableFile, match=f"reading {re.escape(damaged)}: .*{re.escape(sizes)}"):
        list(dataset)
    for at in (footer + 10, key_page + 2):  # a footer pyarrow cannot parse; a small column's page
        Path(damaged).write_bytes(original)
        overwrite(damaged, at, b"\xfe" * 30)
        with pytest.raises(UnreadableFile, match=f"reading {re.escape(damaged)}: Couldn't deserialize thrift"):
            ShardRows(files, shuffle=True, seed=1)
    # Cut short before the reader is made (a copy that stopped): its end is not a Parquet file's end.
    # It was a ValueError, which a training script catching the documented UnreadableFile (OSError) missed.
    os.truncate(damaged, len(original) - 100)
    with pytest.raises(UnreadableFile, match=f"{re.escape(damaged)} is not a Parquet file .*cut short"):
        ShardRows(files, shuffle=True, seed=1)
    Path(damaged).write_bytes(original)
    assert sorted(int(row["x"][0]) for row in dataset) == list(range(ROWS))
    os.remove(damaged)  # a missing file: still a FileNotFoundError, and it says why it may be gone
    with pytest.raises(
        FileNotFoundError, match=f"reading {re.escape(damaged)}: the file is gone: .* make the reader again"
    ):
        list(dataset)


def test_set_epoch_during_an_epoch_fails_loudly(rows_output):
    dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, shuffle_buffer=2)
    with pytest.raises(EpochChanged, match="set_epoch"):
        for i, _ in enumerate(DataLoader(dataset, batch_size=1, num_workers=2, persistent_workers=True)):
            if i == 2:
                dataset.set_epoch(1)
    dataset.set_epoch(2)
    with pytest.raises(EpochChanged):
        for i, _ in enumerate(dataset):
            if i == 2:
                dataset.set_epoch(3)


def run_ranks(tmp_path: Path, target_of, ranks: int = 2) -> list[dict]:
    """``ranks`` forked processes, ``target_of(rank, result_path)`` giving each its function and arguments (it
    writes its JSON result there); their results, once each has exited 0."""
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=t, args=a)
        for t, a in (target_of(r, str(tmp_path / f"rank{r}.json")) for r in range(ranks))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]


def distributed_reader(rank: int, world_size: int, init_file: str, files: list[str], out: str) -> None:
    """One rank of a real gloo process group: the reader takes its rank and world size from torch.distributed."""
    import torch.distributed as dist

    # A reader made before the process group (and never told set_epoch) reads its rank's share all the
    # same: its workers read every row on every rank before, as rank 0 of 1.
    made_before = {context: ShardRows(files, ["x"], shuffle=True, seed=11) for context in ("fork", "forkserver")}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = ShardRows(files, ["x"], shuffle=True, seed=11)
        assert (dataset.rank, dataset.world_size) == (rank, world_size)
        got = ids(DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_x))
        before = {
            context: ids(
                DataLoader(early, batch_size=4, num_workers=2, collate_fn=collate_x, multiprocessing_context=context)
            )
            for context, early in made_before.items()
        }
        Path(out).write_text(json.dumps({"ids": got, "len": len(dataset), "made_before": before}))
    finally:
        dist.destroy_process_group()


def uneven_reader_made_before_the_group(rank: int, init_file: str, out: str, result: str) -> None:
    """A batched reader made before init_process_group (as rank 0 of 1: no warning then), told set_epoch after."""
    import torch.distributed as dist

    dataset = OutputRows(out, fields=("x",), batch_size=3)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            dataset.set_epoch(0)
            dataset.set_epoch(1)  # warned once
        batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
        messages = [(str(w.message), os.path.basename(w.filename)) for w in said]
        Path(result).write_text(json.dumps({"batches": len(batches), "warnings": messages}))
    finally:
        dist.destroy_process_group()


def test_a_reader_made_before_the_process_group_warns_of_uneven_batches_at_set_epoch(tmp_path):
    """7 rows on 2 ranks in batches of 3: 1 batch on rank 0, 2 on rank 1 (a rank waits in DDP's all-reduce
    for ever). Made after init_process_group the reader warned; made before, it was checked as rank 0 of 1."""
    rows = {name: values[:7] for name, values in generic_rows().items()}
    out = write(tmp_path / "out", "rows", rows, nested=True, one_row_groups=True, index_column="index",
                output_columns=["key", "index", "x"], rows_per_block=7)  # fmt: skip
    results = run_ranks(
        tmp_path, lambda r, result: (uneven_reader_made_before_the_group, (r, str(tmp_path / "pg"), str(out), result))
    )
    assert [r["batches"] for r in results] == [1, 2]
    for r in results:
        [(message, filename)] = r["warnings"]
        assert message.startswith("the 2 ranks yield 1 or 2 batches of 3 from this epoch's 7 items")
        assert filename == "test_readers.py"  # the user's set_epoch line


READ_UNDER_RAY = """
import sys
import threading
import weakref
import ray
from torch.utils.data import DataLoader
from ray_pipelines.readers import ShardRows
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
dataset = ShardRows(sys.argv[1:], ["x"], shuffle=True)
for context in ("forkserver", "fork"):
    print("context", context, file=sys.stderr, flush=True)
    loader = DataLoader(dataset, batch_size=7, num_workers=2, multiprocessing_context=context, collate_fn=list)
    print(context, sum(len(batch) for batch in loader))
ray.shutdown()
"""


def test_workers_forked_from_a_ray_driver_warn_once_each(tmp_path):
    """A training process that drives Ray and forks its DataLoader workers is told to use forkserver; workers
    started by forkserver say nothing (in a subprocess: this test process never forks a Ray driver, see
    tests/conftest.py)."""
    files = list_shards(str(write_rows(tmp_path / "out", nested=True, one_row_groups=False)), "train")
    done = subprocess.run(
        [sys.executable, "-c", READ_UNDER_RAY, *files], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["forkserver", str(ROWS), "fork", str(ROWS)]  # every row read either way
    by_forkserver, by_fork = done.stderr.split("context fork\n")
    assert FORKED_FROM_RAY not in by_forkserver
    assert by_fork.count(FORKED_FROM_RAY) == 2  # once in each worker


def test_the_readers_import_without_ray_and_pandas_comes_with_the_readers_that_need_it(tmp_path):
    """A training process imports the readers (every module of them) without the engine's Ray, pandas or
    jsonschema: 0.75 s and their memory in every training process before, 0.08 s now. pyarrow imports
    pandas on its first conversion of a column to NumPy, so a reader whose workers convert columns imports
    it where it is made (its forked DataLoader workers then need not, 0.3 s each); a reader of tensor
    columns only does not."""
    views_output = write_views(tmp_path / "views", nested=True, one_row_groups=True)
    rows_output = write_rows(tmp_path / "rows", nested=True, one_row_groups=True)
    code = (
        "import sys, pkgutil, importlib, ray_pipelines.readers as r\n"
        "for m in pkgutil.iter_modules(r.__path__): importlib.import_module('ray_pipelines.readers.' + m.name)\n"
        "names = ('ray', 'pandas', 'jsonschema', 'ray_pipelines.engine.sink')\n"
        "loaded = lambda: [m for m in names if m in sys.modules]\n"
        "print(len(list(pkgutil.iter_modules(r.__path__))), loaded())\n"
        "r.pages.MIN_ROW_BYTES = 0  # the small test views decoded from their pages, as real ones are\n"
        f"r.ContrastiveViews({str(views_output)!r}, 'train', batch_size=2)\n"
        "print(loaded())\n"
        f"r.OutputRows({str(rows_output)!r}, fields=('x', 'key'))\n"
        "print(loaded())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported, after_views, after_rows = done.stdout.splitlines()
    modules, loaded = imported.split(" ", 1)
    assert int(modules) >= 12 and loaded == "[]"
    assert after_views == "[]" and after_rows == "['pandas']"


def test_a_script_that_ends_with_epochs_half_read_exits_quietly(tmp_path):
    """Iterators left half-read are closed while the interpreter shuts down, after concurrent.futures'
    module globals are gone: stopping their read-ahead printed "Exception ignored ... 'NoneType' object
    has no attribute 'Empty'" at every such exit."""
    views_output = write_views(tmp_path / "views", nested=True, one_row_groups=True)
    code = (
        "import ray_pipelines.readers as r\n"
        f"views = r.ContrastiveViews({str(views_output)!r}, 'train', shuffle=True)\n"
        "items = iter(views); next(items)\n"
        f"batched = r.ContrastiveViews({str(views_output)!r}, 'train', shuffle=True, batch_size=2, reuse_batches=3)\n"
        "batches = iter(batched); next(batches)\n"
        "print('read')\n"
    )
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (0, "read\n", "")


def test_torch_distributed_ranks_split_the_epoch(tmp_path):
    files = list_shards(str(write_rows(tmp_path / "out", nested=True, one_row_groups=True)), "train")
    results = run_ranks(tmp_path, lambda r, result: (distributed_reader, (r, 2, str(tmp_path / "pg"), files, result)))
    assert all(len(r["ids"]) == r["len"] == ROWS // 2 for r in results)
    assert Counter(results[0]["ids"] + results[1]["ids"]) == Counter(range(ROWS))
    for r in results:
        assert r["made_before"] == {"fork": r["ids"], "forkserver": r["ids"]}


# ---- batched mode: whole batches assembled in the reader (DataLoader batch_size=None) -------------------


@pytest.fixture(params=["gathered", "views"])
def copy_path(request, monkeypatch) -> str:
    """Run a test with the tensor columns gathered per piece, and with rows copied from the decoded buffers."""
    monkeypatch.setattr(batches_module, "VIEW_BYTES", 1 << 30 if request.param == "gathered" else 1)
    return request.param


def batched_ids(loader) -> list[int]:
    return [int(v) for (x,) in loader for v in x[:, 0]]


@pytest.mark.parametrize("world_size", [1, 2])
def test_batched_every_row_once_per_epoch_across_workers_and_ranks(rows_output, copy_path, world_size):
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            dataset = OutputRows(
                str(rows_output), fields=("x",), shuffle=True, seed=7, rank=rank, world_size=world_size,
                shuffle_buffer=4, batch_size=4,
            )  # fmt: skip
            dataset.set_epoch(epoch)
            batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
            assert len(batches) == len(dataset) == -(-(ROWS // world_size) // 4)
            sizes = [len(x) for (x,) in batches]
            # only the rank's last batch may be short (the workers split whole batches)
            assert sorted(sizes, reverse=True) == [4] * (len(sizes) - 1) + [ROWS // world_size - 4 * (len(sizes) - 1)]
            for (x,) in batches:
                assert x.is_shared() and x.dtype == torch.float32 and x.shape[1:] == (4,)
                assert torch.equal(x, x[:, :1].expand(-1, 4))  # whole rows: x = [id, id, id, id]
            seen += batched_ids(batches)
        assert sorted(seen) == list(range(ROWS))


def test_batched_drop_last_and_in_process_batches(rows_output):
    dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, seed=2, batch_size=8, drop_last=True)
    batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert len(batches) == len(dataset) == ROWS // 8 and all(len(x) == 8 for (x,) in batches)
    assert len(set(batched_ids(batches))) == 8 * (ROWS // 8)
    in_process = list(OutputRows(str(rows_output), fields=("x",), batch_size=8))  # no worker: private memory
    assert not in_process[0][0].is_shared() and len(in_process) == -(-ROWS // 8)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_one_chunk_split_is_shared_out_anew_each_epoch_and_drop_last_leaves_out_other_rows(tmp_path, layout):
    """A split of one chunk (a small file): the shares were runs of file order, so a rank or worker read the same
    rows every epoch (a features output's are grouped by label), and drop_last left the same rows out for ever."""
    rows = {name: values[:20] for name, values in generic_rows().items()}
    out = write(tmp_path / "out", "rows", rows, nested=layout[0], one_row_groups=layout[1], index_column="index",
                output_columns=["key", "index", "x"], rows_per_block=20)  # fmt: skip
    assert len(list_shards(str(out), "train")) == 1
    rank_rows, read = set(), Counter()
    for epoch in range(8):
        shares = []
        for rank in range(2):
            dataset = OutputRows(str(out), fields=("x",), shuffle=True, seed=5, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            shares.append(frozenset(read_ids(dataset, workers=2)))
        assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(20))  # exactly once
        rank_rows.add(shares[0])
        batched = OutputRows(str(out), fields=("x",), shuffle=True, seed=5, batch_size=8, drop_last=True)
        batched.set_epoch(epoch)
        got = batched_ids(DataLoader(batched, batch_size=None, num_workers=2))
        assert len(got) == len(set(got)) == 16
        read.update(got)
    assert len(rank_rows) == 8  # rank 0's rows differ every epoch
    assert sorted(read) == list(range(20))  # every row read in some epoch
    unshuffled = OutputRows(str(out), fields=("x",), rank=0, world_size=2)
    assert read_ids(unshuffled) == list(range(10))  # shuffle=False: the files' order, shares as before


def test_a_reader_let_go_is_freed_at_once(rows_output):
    """A reader is no reference cycle: its index and batch memory go when the last reference does, not at
    the garbage collector's next pass (the rank check kept a lambda over the reader)."""
    import gc

    gc.disable()
    try:
        for kwargs in ({}, {"batch_size": 4, "reuse_batches": 3}):
            dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, **kwargs)
            let_go = weakref.ref(dataset)
            del dataset
            assert let_go() is None, kwargs
    finally:
        gc.enable()


def test_shards_that_split_a_chunk_decode_its_row_groups_about_once(tmp_path, monkeypatch):
    """An order of a split chunk's rows made every shard that holds a part of it decode nearly all its row
    groups (64 shards decoded 4.4x the groups there are); by row groups, a part shares two at most."""
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sink_module, "TARGET_ROW_GROUP_BYTES", 100)  # a few rows a row group
        write_output(out, "rows", generic_rows(), index_column="index", output_columns=["key", "index", "x"],
                     rows_per_block=30)  # fmt: skip
    files = list_shards(str(out), "train")
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    assert len(files) == 2 and groups >= 12
    decoded, read = [], rowgroups_module.RowGroupReader.read_with_tensors

    def counted(self, file, wanted, *args):
        decoded.extend((file, g) for g in wanted)
        return read(self, file, wanted, *args)

    monkeypatch.setattr(rowgroups_module.RowGroupReader, "read_with_tensors", counted)
    shards, seen = 12, []
    for rank in range(shards):
        dataset = OutputRows(str(out), fields=("x",), shuffle=True, seed=4, rank=rank, world_size=shards)
        dataset.set_epoch(1)
        seen += read_ids(dataset)
    assert sorted(seen) == list(range(ROWS))
    assert len(decoded) <= groups + 2 * shards, (len(decoded), groups)


def test_batched_ranks_yield_as_many_batches_as_each_other(rows_output):
    """DistributedDataParallel runs a step per batch on every rank, and a rank with a batch more waits in its
    all-reduce for the others for ever. 60 rows on 8 ranks are shares of 7 and 8 rows."""

    def rank_batches(batch_size: int, drop_last: bool, workers: int) -> list[list[int]]:
        found = []
        for rank in range(8):
            dataset = OutputRows(
                str(rows_output), fields=("x",), shuffle=True, seed=5, rank=rank, world_size=8,
                batch_size=batch_size, drop_last=drop_last,
            )  # fmt: skip
            batches = list(DataLoader(dataset, batch_size=None, num_workers=workers))
            assert len(batches) == len(dataset)
            found.append([len(x) for (x,) in batches])
        return found

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        # drop_last: every rank the full batches of the smallest share (shares of 8 had 2 batches, of 7 one)
        assert rank_batches(4, drop_last=True, workers=2) == [[4]] * 8
        assert [len(sizes) for sizes in rank_batches(4, drop_last=False, workers=0)] == [2] * 8
    # 7 rows are one batch of 7, 8 rows two: no split gives every row once and every rank as many batches
    with pytest.warns(RuntimeWarning, match=r"the 8 ranks yield 1 or 2 batches of 7 from this epoch's 60 items"):
        assert sorted(len(sizes) for sizes in rank_batches(7, drop_last=False, workers=0)) == [1] * 4 + [2] * 4


def test_batched_order_changes_with_epoch_repeats_for_a_seed_and_mixes_files(rows_output, copy_path):
    def order(seed, epoch, workers=2):
        dataset = OutputRows(str(rows_output), fields=("x",), shuffle=True, seed=seed, shuffle_buffer=4, batch_size=8)
        dataset.set_epoch(epoch)
        return batched_ids(DataLoader(dataset, batch_size=None, num_workers=workers))

    first = order(seed=1, epoch=0)
    assert sorted(first) == list(range(ROWS))
    assert first == order(seed=1, epoch=0)
    assert first != order(seed=1, epoch=1) and first != order(seed=2, epoch=0)
    assert len({i // 10 for i in order(seed=3, epoch=0, workers=0)[:8]}) >= 3  # a file holds 10 consecutive ids


def test_batched_values_are_the_items(views_output, copy_path):
    items = ContrastiveViews(str(views_output), "train", seed=5)
    batched = ContrastiveViews(str(views_output), "train", seed=5, batch_size=5)
    for epoch in (0, 1):
        items.set_epoch(epoch)
        batched.set_epoch(epoch)
        expected = {int(v1[0, 0, 0]): (v1, v2) for v1, v2 in items}
        got = {}
        for view1, view2 in DataLoader(batched, batch_size=None, num_workers=2):
            assert view1.shape[1:] == (1, 32, 24) and view1.dtype == view2.dtype == torch.float32
            assert view1.is_shared() and view2.is_shared()
            got.update({int(a[0, 0, 0]): (a, b) for a, b in zip(view1, view2)})
        assert got.keys() == expected.keys() and len(got) == CLIPS  # the epoch's versions, each clip once
        assert all(torch.equal(got[k][0], expected[k][0]) and torch.equal(got[k][1], expected[k][1]) for k in got)


def test_batched_contrastive_views_rotate_versions_with_persistent_workers(views_output, copy_path):
    dataset = ContrastiveViews(str(views_output), "train", seed=5, batch_size=4)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    by_epoch = []
    for epoch in range(VERSIONS):
        dataset.set_epoch(epoch)
        values = [int(v[0, 0, 0]) for view1, _ in loader for v in view1]
        assert sorted(v // 10 for v in values) == list(range(CLIPS))
        assert all(v % 10 == dataset.version_for(v // 10, epoch) for v in values)
        by_epoch.append({v // 10: v % 10 for v in values})
    assert all(len({versions[c] for versions in by_epoch}) == VERSIONS for c in range(CLIPS))


def test_batched_dicts_are_the_items_with_their_casts(rows_output, copy_path):
    def read(**kwargs):
        dataset = OutputRows(str(rows_output), as_dict=True, dtype=torch.float64, shuffle=True, seed=4, **kwargs)
        return dataset, DataLoader(dataset, batch_size=None if "batch_size" in kwargs else 1, num_workers=2)

    _, items = read()
    expected = {row["key"][0]: row for row in items}
    dataset, batches = read(batch_size=7)
    got = 0
    for batch in batches:
        assert list(batch) == ["key", "index", "x"] and isinstance(batch["key"], list)
        assert batch["x"].dtype == torch.float64 and batch["index"].dtype == torch.int64  # floats cast, ints kept
        for j, key in enumerate(batch["key"]):
            assert torch.equal(batch["x"][j], expected[key]["x"][0]) and batch["index"][j] == expected[key]["index"][0]
            got += 1
    assert got == ROWS == len(expected)


BATCHING_AGAIN = (
    r"the reader yields whole batches \(its batch_size=\), and the DataLoader, given a batch_size too, would "
    r"stack them again \([0-9]+ of them into one\): give the DataLoader batch_size=None"
)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloader_that_would_batch_the_readers_batches_again_is_refused(tmp_path, workers):
    """A batched reader given a DataLoader ``batch_size=3`` as well: ``default_collate`` stacked 3 batches
    into ``[3, B, ...]`` (and 3 times the memory) without a word. Every form a batch takes is refused by name:
    a tuple, a dict, ``(view1, view2)``, a ``batch_transform``'s dict; the DataLoader's ``batch_size=None``
    still gives the batches as they were."""
    rows_output, views_output = (
        write_rows(tmp_path / "rows", False, False),
        write_views(tmp_path / "views", False, False),
    )
    readers = {
        "tuple": OutputRows(str(rows_output), fields=("x",), batch_size=4),
        "dict": OutputRows(str(rows_output), as_dict=True, batch_size=4),
        "views": ContrastiveViews(str(views_output), "train", batch_size=4),
        "transform": OutputRows(str(rows_output), batch_size=4, batch_transform=lambda b: {"x2": 2 * b["x"]}),
    }
    for name, reader in readers.items():
        with pytest.raises(TypeError, match=BATCHING_AGAIN):
            next(iter(DataLoader(reader, batch_size=3, num_workers=workers)))
        (first, *_) = DataLoader(reader, batch_size=None, num_workers=workers)
        tensor = first["x2"] if name == "transform" else first["x"] if name == "dict" else first[0]
        assert tensor.shape[0] == 4, name  # a batch of 4 rows, not 3 batches
    # the batches compare and convert as the plain dicts and tuples they are
    (batch, *_) = readers["dict"]
    assert isinstance(batch, dict) and dict(batch).keys() == batch.keys()
    (batch, *_) = readers["tuple"]
    assert isinstance(batch, tuple) and len(batch) == 1


def memory_id(tensor: torch.Tensor):
    """Which memory a tensor lives in: the shared-memory file (a worker's batch; each arrival is mapped
    anew, so pointers differ) or, in-process, its address."""
    if not tensor.is_shared():
        return tensor.untyped_storage().data_ptr()
    fd, _ = tensor.untyped_storage()._share_fd_cpu_()
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def take_checking_reuse(reused, fresh, workers: int, epochs: int, same, intact_for: int = 1) -> set:
    """Iterate ``reused`` and ``fresh`` (readers alike but for ``reuse_batches``) through DataLoaders in step,
    as a training loop does: each reused batch must equal the fresh one when it is taken and still after
    ``intact_for`` more batches have been taken (the contract: W x (R - prefetch_factor) - 1 through W workers,
    R - 1 in-process); returns the memory (:func:`memory_id`) the reused batches lived in."""
    kwargs = dict(batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    reused_loader, fresh_loader = DataLoader(reused, **kwargs), DataLoader(fresh, **kwargs)
    storages = set()
    for epoch in range(epochs):
        reused.set_epoch(epoch)
        fresh.set_epoch(epoch)
        held = []  # (batch, its fresh twin) of the last batches taken
        for batch, expected in zip(reused_loader, fresh_loader, strict=True):
            assert same(batch, expected)
            storages.add(memory_id(batch[0]))
            assert batch[0].is_shared() == (workers > 0)
            held.append((batch, expected))
            if len(held) > intact_for:
                old, old_expected = held.pop(0)
                assert same(old, old_expected), "a reused batch changed before its time"
    return storages


def same_views(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_reused_batches_are_the_fresh_ones_and_live_in_a_few_buffers(views_output, copy_path):
    def reader(reuse: int) -> ContrastiveViews:
        return ContrastiveViews(str(views_output), "train", seed=5, batch_size=2, reuse_batches=reuse)

    # 2 workers, prefetch_factor 2: R = 4 batches of memory per worker, each batch intact for 2 x 2 - 1 more
    storages = take_checking_reuse(reader(4), reader(0), workers=2, epochs=VERSIONS, same=same_views, intact_for=3)
    assert len(storages) <= 2 * 4  # 18 batches over 3 epochs, in the memory of 4 per worker
    fresh_storages = take_checking_reuse(reader(0), reader(0), workers=2, epochs=1, same=same_views)
    assert len(fresh_storages) == CLIPS // 2  # without reuse: a buffer per batch
    # in-process: batch k and k + R share memory, and a batch is rewritten when the reader makes batch k + R
    in_process = take_checking_reuse(reader(2), reader(0), workers=0, epochs=2, same=same_views)
    assert len(in_process) == 2
    batches = iter(reader(2))
    first = next(batches)[0]
    kept = first.clone()
    next(batches)
    assert torch.equal(first, kept)
    third = next(batches)[0]  # written where the first was
    assert third.data_ptr() == first.data_ptr() and not torch.equal(first, kept)


def test_an_empty_index_cache_is_refused_not_the_working_directory(rows_output, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for empty in ("", " "):
        with pytest.raises(ValueError, match="index_cache is empty: give a folder or a URL"):
            OutputRows(str(rows_output), fields=("x",), index_cache=empty)
    assert list(tmp_path.iterdir()) == []
    OutputRows(str(rows_output), fields=("x",), index_cache=tmp_path / "cache")  # a Path is a folder
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


def test_one_columns_name_is_that_column(rows_output):
    """fields="index" was split into its letters ("has no column i, n, d, e, x")."""
    by_name = list(OutputRows(str(rows_output), fields="index"))
    assert len(by_name) == ROWS and all(len(item) == 1 and int(item[0]) == 0 for item in by_name)
    assert list(OutputRows(str(rows_output), columns="index", as_dict=True))[0].keys() == {"index"}


def test_reuse_batches_needs_the_batched_mode(rows_output):
    with pytest.raises(ValueError, match="reuse_batches needs the batched mode"):
        OutputRows(str(rows_output), fields=("x",), reuse_batches=3)
    with pytest.raises(ValueError, match="reuse_batches must be 0"):
        OutputRows(str(rows_output), fields=("x",), batch_size=4, reuse_batches=-1)
    # The batched mode's other options are refused without it too: they were ignored without a word (a DDP
    # run's drop_last=True in item mode, a batch_transform never called).
    with pytest.raises(ValueError, match="^drop_last needs the batched mode: .*the DataLoader's own drop_last"):
        OutputRows(str(rows_output), fields=("x",), drop_last=True, rank=0, world_size=2)
    with pytest.raises(ValueError, match="^batch_transform needs the batched mode"):
        OutputRows(str(rows_output), fields=("x",), batch_transform=len)
    for bad in (2.0, True, 0, "4"):
        with pytest.raises(ValueError, match="batch_size must be an integer of at least 1"):
            OutputRows(str(rows_output), fields=("x",), batch_size=bad)
    with pytest.raises(ValueError, match="reuse_batches must be 0"):
        OutputRows(str(rows_output), fields=("x",), batch_size=4, reuse_batches=1.5)
    assert OutputRows(str(rows_output), fields=("x",), batch_size=np.int64(4), drop_last=True).batch_size == 4


def test_a_rank_given_is_checked_alone_too(rows_output):
    """rank=3 alone read nothing and said its length was the whole epoch's; rank=1.0 failed later, in len."""
    for given in ({"rank": 3}, {"rank": -1}, {"rank": 2, "world_size": 2}, {"world_size": 0}):
        with pytest.raises(ValueError, match=r"rank -?\d is not in \[0, world_size=\d\)|must be 0 or more"):
            OutputRows(str(rows_output), fields=("x",), **given)
    with pytest.raises(TypeError, match="rank must be an integer, got 1.0"):
        OutputRows(str(rows_output), fields=("x",), rank=1.0, world_size=2)
    dataset = OutputRows(str(rows_output), fields=("x",), rank=np.int64(1), world_size=2)
    assert (dataset.rank, dataset.world_size) == (1, 2) and len(dataset) == ROWS - ROWS // 2


BATCH_COLUMNS = [("x", (5, 3), torch.float32), ("mask", (5, 7), torch.bool), ("n", (5,), torch.int64)]


@pytest.mark.parametrize("shared", [False, True])
def test_a_batchs_columns_are_views_of_one_storage_that_do_not_overlap(shared, monkeypatch):
    tensors = batches_module.batch_tensors([*BATCH_COLUMNS, ("h", (5, 2, 3), torch.float16)], shared)
    assert [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()] == [
        *((name, shape, dtype) for name, shape, dtype in BATCH_COLUMNS),
        ("h", (5, 2, 3), torch.float16),
    ]
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == 1
    assert all(t.is_shared() == shared and t.is_contiguous() and t.data_ptr() % 64 == 0 for t in tensors.values())
    for value, t in enumerate(tensors.values(), start=1):
        t.fill_(value)
    assert [t.double().unique().tolist() for t in tensors.values()] == [[1.0], [1.0], [3.0], [4.0]]
    monkeypatch.setattr(batches_module, "empty_tensor", lambda *args: pytest.fail("allocated for no tensors"))
    assert batches_module.batch_tensors([], shared) == {}  # a batch of strings only: nothing allocated


def test_reused_batch_memory_keeps_a_slots_storage_while_the_columns_stay_alike():
    memory = batches_module.BatchMemory(shared=False, reuse=2)
    first = []
    for _ in range(2):
        memory.next_batch()
        first.append(memory.tensors(BATCH_COLUMNS))
    memory.next_batch()  # slot 0 again, a shorter batch: views of its first rows
    short = memory.tensors([(name, (3, *shape[1:]), dtype) for name, shape, dtype in BATCH_COLUMNS])
    assert short["x"].shape == (3, 3) and short["x"].data_ptr() == first[0]["x"].data_ptr()
    assert first[0]["x"].data_ptr() != first[1]["x"].data_ptr()
    memory.next_batch()  # slot 1 with another dtype: new memory
    other = memory.tensors([("x", (5, 3), torch.float64), *BATCH_COLUMNS[1:]])
    assert other["x"].dtype == torch.float64 and other["x"].data_ptr() != first[1]["x"].data_ptr()


def test_a_short_batch_in_a_new_slot_leaves_room_for_the_full_batches_after_it():
    """An epoch's short last batch may be a slot's first: the slot is made for the batch size, so the
    next epoch's full batch in it is written into the same memory, not into a new mapping."""
    memory = batches_module.BatchMemory(shared=False, reuse=1, capacity=5)
    memory.next_batch()
    short = memory.tensors([(name, (2, *shape[1:]), dtype) for name, shape, dtype in BATCH_COLUMNS])
    assert short["x"].shape == (2, 3) and short["x"].untyped_storage().nbytes() >= 5 * 3 * 4
    memory.next_batch()
    full = memory.tensors(BATCH_COLUMNS)
    assert full["x"].shape == (5, 3) and full["x"].data_ptr() == short["x"].data_ptr()
    memory = batches_module.BatchMemory(shared=False, reuse=1)  # without a capacity: its rows only
    memory.next_batch()
    small = memory.tensors([(name, (2, *shape[1:]), dtype) for name, shape, dtype in BATCH_COLUMNS])
    memory.next_batch()
    assert memory.tensors(BATCH_COLUMNS)["x"].data_ptr() != small["x"].data_ptr()


@pytest.mark.skipif(sys.platform != "linux", reason="MADV_POPULATE_WRITE is Linux's")
@pytest.mark.parametrize("shared", [False, True])
def test_batch_memory_is_mapped_when_made_and_keeps_what_is_written(shared):
    """A batch's fresh memory is mapped in one call when it is made, not a page fault per 4 KiB while
    rows are copied in: the process's resident memory grows by the tensor's size before any write."""
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    tensor = batches_module.empty_tensor((64, 1024, 1024), torch.uint8, shared)  # 64 MiB
    grown = process.memory_info().rss - before
    assert grown >= 0.9 * 64 * 2**20, f"only {grown / 2**20:.1f} MiB mapped"
    tensor[3, 7, 11] = 200
    assert tensor[3, 7, 11] == 200 and tensor.is_shared() == shared


class Scaled:
    """A user's item transform (a class: DataLoader workers pickle it)."""

    def __call__(self, item):
        return tuple(2 * value for value in item)


def test_a_users_transform_gets_the_readers_items_and_is_refused_with_batches(rows_output, views_output):
    """OutputRows and its subclasses set their own conversion over the user's transform=, which then never ran
    (no error); with batch_size= any reader's item transform was dropped without a word."""
    plain = sorted(float(x[0]) for (x,) in OutputRows(str(rows_output), fields=("x",)))
    doubled = list(DataLoader(OutputRows(str(rows_output), fields=("x",), transform=Scaled()), num_workers=2))
    assert sorted(float(x[0, 0]) for (x,) in doubled) == [2 * v for v in plain]
    as_dict = OutputRows(str(rows_output), columns=["key", "x"], as_dict=True, transform=lambda row: row["key"])
    assert sorted(as_dict) == [f"k{i:03d}" for i in range(ROWS)]
    pairs = list(ContrastiveViews(str(views_output), seed=1, transform=Scaled()))
    plain_pairs = list(ContrastiveViews(str(views_output), seed=1))
    assert len(pairs) == len(plain_pairs) == CLIPS
    assert all(torch.equal(v1, 2 * p1) and torch.equal(v2, 2 * p2) for (v1, v2), (p1, p2) in zip(pairs, plain_pairs))
    for reader, kwargs in ((OutputRows, {"fields": ("x",)}), (ShardRows, {}), (ContrastiveViews, {})):
        where = str(views_output) if reader is ContrastiveViews else str(rows_output)
        if reader is ShardRows:
            where = list_shards(where, "train")
        with pytest.raises(ValueError, match="transform applies to items.*pass batch_transform"):
            reader(where, batch_size=4, transform=Scaled(), **kwargs)


def test_columns_a_reader_does_not_have_are_refused_by_name(rows_output, views_output):
    with pytest.raises(ValueError, match="no column nope in these files; columns: key, index, x"):
        ShardRows(list_shards(str(rows_output), "train"), columns=["x", "nope"])
    assert [sorted(row) for row in ShardRows(list_shards(str(rows_output), "train"), columns="x")][:1] == [["x"]]
    with pytest.raises(ValueError, match="ContrastiveViews reads the view1 and view2 columns"):
        ContrastiveViews(str(views_output), columns=["view1"])


@pytest.mark.parametrize("batch_size", [None, 7])
def test_dtype_casts_floats_to_bfloat16_and_refuses_other_types(rows_output, batch_size):
    """bfloat16 failed in batched mode (NumPy has none); torch.int32 truncated x = 0.7 to 0 in both modes."""
    for bad in (torch.int32, torch.bool, "float16", torch.float8_e4m3fn):
        with pytest.raises(ValueError, match="dtype casts the float columns: give one of torch.float16, "):
            OutputRows(str(rows_output), fields=("x",), dtype=bad, batch_size=batch_size)
    dataset = OutputRows(str(rows_output), fields=("x", "index"), dtype=torch.bfloat16, batch_size=batch_size)
    loader = DataLoader(dataset, batch_size=None if batch_size else 7, num_workers=2)
    values = []
    for x, index in loader:
        assert x.dtype == torch.bfloat16 and index.dtype == torch.int64  # floats cast, integers kept
        values += x[:, 0].float().tolist()
        assert torch.equal(x, x[:, :1].expand_as(x))  # every row [id, id, id, id]
    assert sorted(values) == [float(torch.tensor(float(i)).bfloat16()) for i in range(ROWS)]
