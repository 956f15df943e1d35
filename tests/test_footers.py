"""Footer tables (readers/footers.py, the footer_tables kernel) hold what pyarrow reads from the same footer.

Files are written by pyarrow with the sink's options and with what files from elsewhere have (statistics,
dictionary pages, other codecs, several rows per group); footers cut short or damaged are refused or read
within their bounds, never a crash; readers give the same rows with or without the tables.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ray_pipelines.readers.contrastive as contrastive_module
import ray_pipelines.readers.rowgroups as rowgroups_module
from ray_pipelines.engine.arrow import tensor_array
from ray_pipelines.readers import ContrastiveViews, ShardRows, list_shards
from ray_pipelines.readers.contrastive import _statistics_values
from ray_pipelines.readers.footers import footer_table, statistics_values
from ray_pipelines.readers.pages import load_kernels
from ray_pipelines.readers.rowgroups import chunk_range, read_footers
from tests.test_pages import values, written
from tests.test_readers import write_views

pytestmark = pytest.mark.usefixtures("small_tensor_pages")


def table_of_everything() -> pa.Table:
    rows = 12
    return pa.table(
        {
            "key": [f"clip{i:02d}.flac" for i in range(rows)],
            "version": np.arange(rows, dtype=np.int64) % 3,
            "v": tensor_array(values((4, 40))),
            "w": tensor_array(values((2, 8), np.float64, seed=1)),
            "score": np.linspace(0, 1, rows).astype(np.float32),
        }
    )


def footer_bytes(data: bytes) -> bytes:
    length = struct.unpack("<i", data[-8:-4])[0]
    return data[-8 - length : -8]


@pytest.mark.parametrize(
    "options",
    [
        {},  # the sink's: lz4, byte-stream-split floats, no dictionary, no statistics
        {"use_dictionary": True, "write_statistics": True},
        {"compression": "zstd", "write_statistics": True},
        {"compression": "snappy", "use_dictionary": ["key"]},
        {"compression": "none", "use_byte_stream_split": False},
    ],
)
@pytest.mark.parametrize("rows_per_group", [1, 5])
def test_footer_tables_hold_what_pyarrow_reads_from_the_footer(options, rows_per_group):
    kernels = load_kernels()
    data = written(table_of_everything(), rows_per_group=rows_per_group, **options)
    md = pq.read_metadata(pa.BufferReader(data))
    table = footer_table(footer_bytes(data))
    assert table is not None and table.chunks.shape[:2] == (md.num_row_groups, md.num_columns)
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        assert table.row_groups[g].tolist() == [rg.num_rows, rg.total_byte_size]
        for c in range(md.num_columns):
            expected, name = rg.column(c), md.schema.column(c).path.split(".")[0]
            got = table.chunk(g, c, name)
            assert got is not None and table.chunk(g, c, name + "x") is None
            assert got.compression == expected.compression and got.physical_type == expected.physical_type
            assert got.has_dictionary_page == expected.has_dictionary_page
            assert (got.num_values, got.data_page_offset, got.total_compressed_size) == (
                expected.num_values,
                expected.data_page_offset,
                expected.total_compressed_size,
            )
            assert chunk_range(got) == chunk_range(expected)
            stats = expected.statistics
            has_stats = table.chunks[g, c, kernels.CHUNK_MIN_AT] >= 0
            assert has_stats == (stats is not None and stats.has_min_max)
    starts, stops = table.spans()
    for g in range(md.num_row_groups):
        spans = [chunk_range(md.row_group(g).column(c)) for c in range(md.num_columns)]
        assert (starts[g], stops[g]) == (min(b for b, _ in spans), max(b + n for b, n in spans))


def test_statistics_of_one_row_groups_are_read_as_pyarrow_reads_them():
    data = written(table_of_everything(), rows_per_group=1, write_statistics=True, use_dictionary=True)
    md = pq.read_metadata(pa.BufferReader(data))
    table = footer_table(footer_bytes(data))
    # Several files' footers at once (their bytes joined): each row's values from its own footer.
    other = written(table_of_everything().slice(5), rows_per_group=1, write_statistics=True)
    other_md = pq.read_metadata(pa.BufferReader(other))
    got = statistics_values(md, [table, footer_table(footer_bytes(other)), table], ("key", "version"))
    assert isinstance(got[0], pa.LargeStringArray) and got[1].dtype == np.int64
    by_pyarrow = _statistics_values([md, other_md, md], ("key", "version"))
    assert [got[0].to_pylist(), got[1].tolist()] == list(by_pyarrow) and len(got[0]) == 12 + 7 + 12
    assert got[0].to_pylist()[:2] == ["clip00.flac", "clip01.flac"] and got[1].tolist()[:4] == [0, 1, 2, 0]
    assert statistics_values(md, [table], ("score",)) is None  # a float: not read from statistics
    several = written(table_of_everything(), rows_per_group=2, write_statistics=True)
    assert statistics_values(md, [footer_table(footer_bytes(several))], ("key",)) is None  # min != max
    # A key that is not UTF-8 (pyarrow writes what it is given): neither route takes it, the columns are read.
    keys = pa.StringArray.from_buffers(3, pa.py_buffer(np.array([0, 2, 3, 5], np.int32)), pa.py_buffer(b"ab\xffcd"))
    not_utf8 = written(pa.table({"key": keys, "version": np.arange(3)}), rows_per_group=1, write_statistics=True)
    md = pq.read_metadata(pa.BufferReader(not_utf8))
    assert statistics_values(md, [footer_table(footer_bytes(not_utf8))], ("version",))[0].tolist() == [0, 1, 2]
    assert statistics_values(md, [footer_table(footer_bytes(not_utf8))], ("key", "version")) is None
    assert _statistics_values([md], ("key", "version")) is None


def test_damaged_footers_are_refused_or_read_never_crash():
    """The kernel indexes without bounds checks (numba): footers cut anywhere or with bytes changed are
    refused, or give tables whose offsets stay inside the footer."""
    kernels = load_kernels()
    raw = footer_bytes(written(table_of_everything(), rows_per_group=3, write_statistics=True))
    assert footer_table(raw) is not None
    rng = np.random.default_rng(0)
    damaged = [raw[:cut] for cut in range(0, len(raw), max(1, len(raw) // 150))]
    for _ in range(600):
        changed = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            changed[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        damaged.append(bytes(changed))
    refused = 0
    for bad in damaged:
        table = footer_table(bad)
        if table is None:
            refused += 1
            continue
        for at, length in (
            (kernels.CHUNK_MIN_AT, kernels.CHUNK_MIN_LENGTH),
            (kernels.CHUNK_NAME_AT, kernels.CHUNK_NAME_LENGTH),
        ):
            found = table.chunks[..., at] >= 0
            assert (table.chunks[..., at][found] + table.chunks[..., length][found] <= len(bad)).all()
    assert refused >= 150  # at least every cut one


def test_reads_of_decoded_columns_parse_no_footer_and_moved_columns_are_read_right(tmp_path):
    """A worker that reads only tensor columns takes their chunks from the footer tables (pyarrow never
    parses a footer there); a file whose columns are in another order is read right all the same."""
    v, w = values((4, 40)), values((4, 40), seed=2)
    (tmp_path / "a.parquet").write_bytes(written(pa.table({"v": tensor_array(v), "w": tensor_array(w)})))
    (tmp_path / "b.parquet").write_bytes(written(pa.table({"w": tensor_array(w), "v": tensor_array(v)})))
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    dataset = ShardRows(files, ["v", "w"])
    assert set(dataset.reader._footers) == {0}  # the first file's schema, nothing more
    worker = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker started by spawn holds
    rows = list(worker)
    assert len(rows) == 24 and set(worker.reader._footers) == {1}  # b's columns moved: pyarrow reads them
    expected = np.concatenate([v, v]), np.concatenate([w, w])
    np.testing.assert_array_equal(np.stack([r["v"] for r in rows]), expected[0])
    np.testing.assert_array_equal(np.stack([r["w"] for r in rows]), expected[1])
    only_a = pickle.loads(pickle.dumps(ShardRows(files[:1], ["v", "w"])))
    assert len(list(only_a)) == 12 and not only_a.reader._footers  # no fallback: no pyarrow footer at all


def test_contrastive_views_index_the_same_from_tables_and_from_pyarrow(tmp_path, monkeypatch):
    out = write_views(tmp_path / "out", nested=True, one_row_groups=True)
    footers = read_footers(list_shards(str(out), "train"))
    tables = [footer_table(raw) for raw in footers.raw]
    assert all(table is not None for table in tables)
    keys, versions = statistics_values(footers.parsed(0), tables, ("key", "version"))
    assert [keys.to_pylist(), versions.tolist()] == list(_statistics_values(footers.each_parsed(), ("key", "version")))
    with_tables = ContrastiveViews(str(out), "train", seed=3)
    assert len(with_tables.files) > 2
    monkeypatch.setattr(rowgroups_module, "FOOTER_BATCH", 2)  # the footers read 2 files at a time
    batched = ContrastiveViews(str(out), "train", seed=3)
    monkeypatch.setattr("ray_pipelines.readers.parquet.DECODE_PAGES", False)  # no tables: pyarrow's route
    without = ContrastiveViews(str(out), "train", seed=3)
    monkeypatch.setattr(contrastive_module, "_statistics_values", lambda footers, names: None)
    from_columns = ContrastiveViews(str(out), "train", seed=3)  # no statistics: the key and version columns
    for other in (batched, without, from_columns):
        assert with_tables.keys.equals(other.keys)
        assert np.array_equal(with_tables._rows_by_clip, other._rows_by_clip)
        assert np.array_equal(with_tables._versions_by_clip, other._versions_by_clip)
        for name in ("file", "group", "rows", "first_row", "decoded_bytes"):
            assert np.array_equal(getattr(with_tables.index, name), getattr(other.index, name))
