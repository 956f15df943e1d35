"""Tensor columns decoded from their Parquet pages (readers/pages.py) are exactly what pyarrow decodes.

Files are written by pyarrow with the sink's encodings (BYTE_STREAM_SPLIT floats, a row group per row)
and with the variations a file from elsewhere may have (codecs, PLAIN floats, several rows and pages per
row group, float64, ``arrow.fixed_shape_tensor``); the layouts the fast path does not read (a null,
dictionary pages, data pages v2) must be refused, and the readers then fall back to pyarrow.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from ray_pipelines.engine.arrow import column_to_numpy, tensor_array
from ray_pipelines.engine.sink import float_tensor_leaves
from ray_pipelines.readers import ShardRows
from ray_pipelines.readers.pages import NotDecodable, decode_chunk, tensor_leaves
from ray_pipelines.readers.rowgroups import chunk_range, pread_ranges

ROWS = 12
# Every test here reads tensors as real outputs are read: decoded from their pages.
pytestmark = pytest.mark.usefixtures("small_tensor_pages")


def values(shape, dtype=np.float32, seed=0) -> np.ndarray:
    """Log-mel-like numbers (repeated exponents compress) with every byte plane varied."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((ROWS, *shape)) * 3 - 20).astype(dtype)


def written(table: pa.Table, rows_per_group: int = 1, **options) -> bytes:
    """The Parquet bytes of ``table``, by default with the sink's encodings and a row group per row."""
    options = {
        "compression": "lz4",
        "use_dictionary": False,
        "write_statistics": False,
        "use_byte_stream_split": float_tensor_leaves(table.schema) or False,
        **options,
    }
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=rows_per_group, **options)
    return sink.getvalue()


def decode_all(data: bytes, name: str = "v") -> np.ndarray:
    """Every row group's chunk of ``name`` decoded by the fast path, concatenated."""
    md = pq.read_metadata(pa.BufferReader(data))
    leaf = tensor_leaves(md, [name])[name]
    arrays = []
    for g in range(md.num_row_groups):
        chunk = md.row_group(g).column(leaf.leaf)
        start, length = chunk_range(chunk)
        arrays.append(decode_chunk(memoryview(data)[start : start + length], chunk, leaf, md.row_group(g).num_rows))
    return np.concatenate(arrays)


def pyarrow_values(data: bytes, name: str = "v") -> np.ndarray:
    return column_to_numpy(pq.read_table(pa.BufferReader(data)).column(name).combine_chunks())


LAYOUTS = [
    pytest.param((1, 16, 12), np.float32, {}, 1, id="the sink's: float32 views, BYTE_STREAM_SPLIT, lz4"),
    pytest.param((300,), np.float32, {}, 1, id="1-D rows"),
    pytest.param((4, 8), np.float64, {}, 1, id="float64"),
    pytest.param((4, 8), np.float32, {"use_byte_stream_split": False}, 1, id="PLAIN floats"),
    pytest.param((4, 8), np.int64, {}, 1, id="int64"),
    pytest.param((6, 10), np.float32, {"compression": "zstd"}, 1, id="zstd"),
    pytest.param((6, 10), np.float32, {"compression": "snappy"}, 1, id="snappy"),
    pytest.param((6, 10), np.float32, {"compression": "none"}, 1, id="uncompressed"),
    pytest.param((2, 50), np.float32, {"data_page_size": 256}, 5, id="several rows and pages per row group"),
]


@pytest.mark.parametrize("shape, dtype, options, rows_per_group", LAYOUTS)
def test_decoded_pages_are_what_pyarrow_decodes(shape, dtype, options, rows_per_group):
    expected = values(shape, dtype)
    data = written(
        pa.table({"key": [f"k{i}" for i in range(ROWS)], "v": tensor_array(expected)}), rows_per_group, **options
    )
    if "data_page_size" in options:  # the case is what it says: a row group of several pages
        assert pq.read_metadata(pa.BufferReader(data)).row_group(0).column(1).total_compressed_size > 1024
    decoded = decode_all(data)
    assert decoded.dtype == dtype and decoded.shape == (ROWS, *shape)
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(decoded, pyarrow_values(data))


@pytest.mark.parametrize("rows_per_group", [1, 3])
def test_uncompressed_plain_pages_are_taken_where_they_lie(tmp_path, rows_per_group):
    """What the sink writes uncompressed (PLAIN floats): the local read places the values 64-byte aligned
    in a writable buffer and the decoder returns a view of them, no copy. Bytes that are read-only or
    unaligned are copied out as before, to the same values."""
    expected = values((4, 8))
    path = tmp_path / "plain.parquet"
    path.write_bytes(
        written(
            pa.table({"v": tensor_array(expected)}), rows_per_group, compression="none", use_byte_stream_split=False
        )
    )
    md = pq.read_metadata(path)
    leaf = tensor_leaves(md, ["v"])["v"]
    with open(path, "rb") as f:
        read_range = pread_ranges(f.fileno())
        for g in range(md.num_row_groups):
            chunk, rows = md.row_group(g).column(leaf.leaf), md.row_group(g).num_rows
            start, length = chunk_range(chunk)
            raw = read_range(start, start + length, rows * leaf.row_values * 4)
            decoded = decode_chunk(raw, chunk, leaf, rows)
            np.testing.assert_array_equal(decoded, expected[g * rows_per_group : g * rows_per_group + rows])
            assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))
            assert decoded.ctypes.data % 64 == 0 and decoded.flags.writeable
            # the same bytes read-only (a fetched range), and one byte off alignment: copies, same values
            assert not np.shares_memory(decode_chunk(memoryview(bytes(raw)), chunk, leaf, rows), decoded)
            shifted = memoryview(bytearray(len(raw) + 1))[1:]
            np.frombuffer(shifted, dtype=np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
            copied = decode_chunk(shifted, chunk, leaf, rows)
            assert not np.shares_memory(copied, np.frombuffer(shifted, dtype=np.uint8))
            np.testing.assert_array_equal(copied, decoded)


def test_fixed_shape_tensor_columns_of_format_1_are_decoded():
    expected = values((3, 5))
    data = written(pa.table({"v": pa.FixedShapeTensorArray.from_numpy_ndarray(expected)}))
    np.testing.assert_array_equal(decode_all(data), expected)


def refused(data: bytes, name: str = "v") -> bool:
    try:
        decode_all(data, name)
    except NotDecodable:
        return True
    return False


def test_layouts_it_does_not_read_are_refused():
    rows = values((2, 3))
    column = tensor_array(rows)
    with_null = pa.array(column.to_pylist()[:-1] + [None], type=column.type)
    assert refused(written(pa.table({"v": with_null}), rows_per_group=ROWS))  # the null row is in the one group
    assert refused(written(pa.table({"v": column}), use_dictionary=True, use_byte_stream_split=False))
    assert refused(written(pa.table({"v": column}), data_page_version="2.0"))
    assert not refused(written(pa.table({"v": column})))
    # a file whose column holds other values than the first file's (float64 where it was float32)
    leaf = tensor_leaves(pq.read_metadata(pa.BufferReader(written(pa.table({"v": column})))), ["v"])["v"]
    doubles = written(pa.table({"v": tensor_array(rows.astype(np.float64))}))
    chunk = pq.read_metadata(pa.BufferReader(doubles)).row_group(0).column(0)
    start, length = chunk_range(chunk)
    with pytest.raises(NotDecodable, match="DOUBLE"):
        decode_chunk(memoryview(doubles)[start : start + length], chunk, leaf, 1)
    # int16 tokens are INT32 on disk, booleans bit-packed: not offered to the fast path at all
    md = pq.read_metadata(
        pa.BufferReader(
            written(pa.table({"t": tensor_array(rows.astype(np.int16)), "b": tensor_array(rows > -20), "v": column}))
        )
    )
    assert list(tensor_leaves(md, ["t", "b", "v"])) == ["v"]


@pytest.mark.parametrize("decodable", [True, False], ids=["pages decoded", "data pages v2: pyarrow decodes"])
@pytest.mark.parametrize("batched", [False, True], ids=["items", "batches"])
def test_readers_read_decoded_and_fallen_back_columns_alike(tmp_path, decodable, batched):
    rows = values((2, 6))
    rows[:, 0, 0] = np.arange(ROWS)  # an item says which row it is
    files = []
    for i, part in enumerate((slice(0, ROWS // 2), slice(ROWS // 2, ROWS))):
        options = {} if decodable or i == 0 else {"data_page_version": "2.0"}
        path = tmp_path / f"part-{i}.parquet"
        path.write_bytes(written(pa.table({"id": np.arange(ROWS)[part], "v": tensor_array(rows[part])}), **options))
        files.append(str(path))
    dataset = ShardRows(files, ["id", "v"], shuffle=True, seed=1, batch_size=5 if batched else None)
    table, decoded = dataset.reader.read_with_tensors(1, [0, 1], ["id", "v"], dataset.tensor_leaves)
    assert ("v" in decoded) == decodable and table.column_names == (["id"] if decodable else ["id", "v"])
    got = {}
    for batch in DataLoader(dataset, batch_size=None if batched else 4, num_workers=2):
        for i, row in zip(batch["id"].tolist(), batch["v"]):
            got[i] = row
    assert sorted(got) == list(range(ROWS))
    assert all(torch.equal(got[i], torch.from_numpy(rows[i])) for i in range(ROWS))


def test_damaged_chunks_are_refused_or_read_never_crash():
    """The kernels index without bounds checks (numba), so every length they follow is checked first: a
    chunk cut short or with bytes changed anywhere (header, levels, values) is refused or decoded to the
    right shape (changed values are still values: pyarrow does not checksum pages either)."""
    expected = values((4, 40))
    for options in ({}, {"compression": "none"}, {"use_byte_stream_split": False, "compression": "none"}):
        data = written(pa.table({"v": tensor_array(expected)}), rows_per_group=ROWS, **options)
        md = pq.read_metadata(pa.BufferReader(data))
        leaf = tensor_leaves(md, ["v"])["v"]
        chunk = md.row_group(0).column(leaf.leaf)
        start, length = chunk_range(chunk)
        raw = data[start : start + length]
        np.testing.assert_array_equal(decode_chunk(memoryview(raw), chunk, leaf, ROWS), expected)
        rng = np.random.default_rng(0)
        damaged = [raw[:cut] for cut in range(0, length, max(1, length // 97))]
        for _ in range(300):
            changed = bytearray(raw)
            at = int(rng.integers(0, min(length, 64))) if rng.random() < 0.7 else int(rng.integers(0, length))
            changed[at] = int(rng.integers(0, 256))
            damaged.append(bytes(changed))
        outcomes = {"refused": 0, "read": 0}
        # Uncompressed PLAIN values are viewed in place when the bytes are writable and aligned (as a local
        # read places them): the damaged chunks go through that path too.
        viewed = options.get("use_byte_stream_split") is False
        as_read = (lambda bad, at=length - expected.nbytes: in_place(bad, at)) if viewed else memoryview
        if viewed:
            intact = as_read(raw)
            assert np.shares_memory(decode_chunk(intact, chunk, leaf, ROWS), np.frombuffer(intact, np.uint8))
        for bad in damaged:
            try:
                got = decode_chunk(as_read(bad), chunk, leaf, ROWS)
            except NotDecodable:
                outcomes["refused"] += 1
            else:
                assert got.shape == expected.shape
                outcomes["read"] += 1
        assert outcomes["refused"] >= 97  # at least every cut one


def in_place(data: bytes, values_at: int) -> memoryview:
    """``data`` in a writable buffer placed so that byte ``values_at`` is 64-byte aligned, as
    ``rowgroups.pread_ranges`` places an uncompressed chunk's values."""
    shift = -values_at % 64
    buffer = memoryview(pa.allocate_buffer(len(data) + shift))[shift:]
    np.frombuffer(buffer, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
    return buffer


def test_numba_loads_only_in_a_process_that_decodes_pages(tmp_path):
    """A job's driver imports the readers; numba (and LLVM) load only where a reader decodes pages."""
    import subprocess
    import sys

    small = pa.table({"v": tensor_array(values((4, 8)))})  # 128-byte rows: below MIN_ROW_BYTES, pyarrow reads
    large = pa.table({"v": tensor_array(values((16, 512)))})  # 32 KiB rows: decoded from their pages
    (tmp_path / "small.parquet").write_bytes(written(small))
    (tmp_path / "large.parquet").write_bytes(written(large))
    script = (
        "import sys; from ray_pipelines.readers import ShardRows; "
        "rows = ShardRows([sys.argv[1]], ['v']); next(iter(rows)); print('numba' in sys.modules)"
    )
    for name, loaded in (("small", "False"), ("large", "True")):
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"{name}.parquet")], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == loaded, name
