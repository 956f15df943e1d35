"""Writes past the page cache: the same bytes as an ordinary write, whatever the sizes and chunks."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_pipelines import direct_io
from ray_pipelines.direct_io import BLOCK, STAGING_BYTES, DirectFile
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.storage import Storage


def goes_direct(folder) -> bool:
    """Whether DirectFile bypasses the cache here: a local filesystem that takes an aligned O_DIRECT write."""
    if not direct_io.goes_direct(os.path.join(folder, "probe")):
        return False
    probe = os.path.join(folder, "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            os.write(fd, mmap.mmap(-1, BLOCK))
        finally:
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def write_in_chunks(path, data: bytes, rng) -> DirectFile:
    with DirectFile(str(path)) as f:
        pos = 0
        while pos < len(data):
            take = int(rng.integers(1, STAGING_BYTES // 2))
            assert f.write(memoryview(data)[pos : pos + take]) == len(data[pos : pos + take])
            pos += take
            assert f.tell() == min(pos, len(data))
    return f


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, STAGING_BYTES, STAGING_BYTES + 5, 2 * STAGING_BYTES + 3 * BLOCK + 17]
)
def test_same_bytes_and_whole_blocks_go_direct(tmp_path, size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    f = write_in_chunks(tmp_path / "out.bin", data, rng)
    assert (tmp_path / "out.bin").read_bytes() == data
    # Every whole block went past the page cache; the partial last one went through it.
    expected = size - size % BLOCK if goes_direct(tmp_path) else 0
    assert f.direct_bytes == expected


def test_files_open_at_once_do_not_share_a_staging_buffer(tmp_path):
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, STAGING_BYTES + 1000, dtype=np.uint8).tobytes() for _ in range(2))
    with DirectFile(str(tmp_path / "a")) as fa, DirectFile(str(tmp_path / "b")) as fb:
        for start in range(0, len(a), 100_000):  # interleaved: each file's bytes stay its own
            fa.write(a[start : start + 100_000])
            fb.write(b[start : start + 100_000])
    assert (tmp_path / "a").read_bytes() == a and (tmp_path / "b").read_bytes() == b


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a tmpfs at /dev/shm")
def test_tmpfs_is_written_through_the_cache():
    data = bytes(range(256)) * 100
    path = f"/dev/shm/ray-pipelines-direct-io-{os.getpid()}"
    try:
        with DirectFile(path) as f:
            f.write(data)
        with open(path, "rb") as written:
            assert written.read() == data
        assert direct_io.filesystem_type("/dev/shm") == "tmpfs" and f.direct_bytes == 0
    finally:
        os.remove(path)


def test_the_mount_table_names_the_innermost_mount(tmp_path, monkeypatch):
    table = tmp_path / "mounts"
    table.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "server:/data /mnt/my\\040data nfs4 rw 0 0\n"  # a space in the mount point
        "tmpfs /mnt/my\\040data/scratch tmpfs rw 0 0\n"
    )
    monkeypatch.setattr(direct_io, "MOUNTS", str(table))
    assert direct_io.filesystem_type("/mnt/my data/run1") == "nfs4"
    assert direct_io.filesystem_type("/mnt/my data/scratch/x") == "tmpfs"
    assert direct_io.filesystem_type("/mnt/my datax") == "ext4"  # a sibling, not inside
    assert not direct_io.goes_direct("/mnt/my data/run1/part.parquet")
    assert direct_io.goes_direct("/home/user/part.parquet") == direct_io.supported()


def test_without_o_direct_the_file_is_written_the_ordinary_way(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)  # a platform without it (macOS)
    data = bytes(range(256)) * 100
    with DirectFile(str(tmp_path / "out.bin")) as f:
        f.write(data)
    assert (tmp_path / "out.bin").read_bytes() == data and f.direct_bytes == 0


def test_a_failed_write_leaves_no_file(tmp_path):
    storage = Storage(str(tmp_path))
    with pytest.raises(RuntimeError):
        with storage.open_atomic("part.parquet", direct=True) as f:
            f.write(b"x" * (BLOCK * 3))
            raise RuntimeError("the writer failed half way")
    assert list(tmp_path.iterdir()) == []


def test_parquet_shards_are_the_same_bytes_either_way(tmp_path):
    n = 40
    rows = {
        "key": np.array([f"k{i:02d}" for i in range(n)], dtype=object),
        "version": np.zeros(n, dtype=np.int64),
        "view1": np.random.default_rng(0).standard_normal((n, 256, 128)).astype(np.float32),
        "error": np.array([""] * n, dtype=object),
        "split": np.array(["train"] * n, dtype=object),
        "samples_per_input": np.ones(n, dtype=np.int64),
        "etag": np.array([""] * n, dtype=object),
    }
    files = {}
    for direct in (True, False):
        out = tmp_path / str(direct)
        sink = ShardSink(
            output=str(out),
            storage_options=None,
            fingerprint="f" * 64,
            index_column="version",
            output_columns=["key", "version", "view1"],
            direct_io=direct,
        )
        report = sink.write_rows(rows, rank=0)
        assert report["rows"] == n and report["bytes"] > STAGING_BYTES  # more than one staging buffer
        files[direct] = {p.name: p.read_bytes() for p in out.glob("train/*.parquet")}
    assert files[True] == files[False] and len(files[True]) == 1
    table = pq.read_table(next((tmp_path / "True").glob("train/*.parquet")))
    assert np.array_equal(column_to_numpy(table.column("view1")), rows["view1"])
