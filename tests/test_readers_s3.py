"""The readers from s3:// on a real S3 endpoint (moto server): ranged reads, workers, epochs."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

import ray_pipelines.readers.rowgroups as rowgroups
from bench.readers import write_encode
from ray_pipelines.readers import ContrastiveViews, OutputRows
from ray_pipelines.readers.encode import EncodedLatents, collate_encoded, open_encoded
from ray_pipelines.readers.errors import UnreadableFile
from tests.test_readers import CLIPS, ROWS, assert_same_index, contrastive_rows, generic_rows, write

# Every test here reads tensors as real outputs are read: decoded from their pages.
pytestmark = pytest.mark.usefixtures("small_tensor_pages")


def write_views_s3(url: str, options: dict) -> None:
    """The tests' contrastive output on S3 (views as ``fixed_shape_tensor``, a row group per row)."""
    write(url, "augment", contrastive_rows(), nested=False, one_row_groups=True, index_column="version",
          output_columns=["key", "version", "view1", "view2"], rows_per_block=9, storage_options=options)  # fmt: skip


def files_per_fetch(monkeypatch) -> list[int]:
    """From now on, how many files each concurrent fetch of byte ranges (``rowgroups._cat_ranges``) reads."""
    fetches: list[int] = []
    cat_ranges = rowgroups._cat_ranges

    def counting(fs, paths, starts, stops):
        fetches.append(len(paths))
        return cat_ranges(fs, paths, starts, stops)

    monkeypatch.setattr(rowgroups, "_cat_ranges", counting)
    return fetches


def test_rows_from_s3_every_row_once_with_persistent_workers(s3_bucket):
    bucket, options, _ = s3_bucket
    url = f"s3://{bucket}/rows"
    write(url, "rows", generic_rows(), nested=True, one_row_groups=True, index_column="index",
          output_columns=["key", "index", "x"], rows_per_block=10, storage_options=options)  # fmt: skip
    dataset = OutputRows(url, fields=("x",), shuffle=True, seed=1, shuffle_buffer=8, storage_options=options)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        orders.append([int(v) for (x,) in loader for v in x[:, 0]])
        assert sorted(orders[-1]) == list(range(ROWS))
    assert orders[0] != orders[1]


def test_contrastive_views_from_s3_fetch_only_their_row_groups(s3_bucket, tmp_path, monkeypatch):
    bucket, options, fs = s3_bucket
    url = f"s3://{bucket}/views"
    write_views_s3(url, options)
    fetched = []

    def counting(fs_, paths, starts, stops):
        fetched.append(sum(b - a for a, b in zip(starts, stops)))
        return cat_ranges(fs_, paths, starts, stops)

    cat_ranges = rowgroups._cat_ranges
    monkeypatch.setattr(rowgroups, "_cat_ranges", counting)
    monkeypatch.setattr(rowgroups, "HOLE_BYTES", 0)  # one range per row group, to count them
    dataset = ContrastiveViews(url, "train", seed=4, storage_options=options)
    fetched.clear()  # the footers read when the dataset was made
    values = sorted(int(v1[0, 0, 0]) for v1, _ in dataset)
    assert values == sorted(10 * c + dataset.version_for(c) for c in range(CLIPS))
    data_bytes = sum(fs.size(p) for p in fs.find(f"{bucket}/views/train"))
    assert 0 < sum(fetched) < 0.6 * data_bytes  # a third of the rows and their files' footers, not everything
    with_workers = DataLoader(ContrastiveViews(url, "train", seed=4, storage_options=options), 4, num_workers=2)
    assert sorted(int(v[0, 0, 0]) for view1, _ in with_workers for v in view1) == values


def test_contrastive_views_from_s3_read_their_footers_a_batch_at_a_time(s3_bucket, monkeypatch):
    """Made from an object store a batch of files' footers at a time (one concurrent fetch of their tails
    each, the next one while a batch is used), a reader is the one made from all of them at once."""
    bucket, options, _ = s3_bucket
    url = f"s3://{bucket}/batched-views"
    write_views_s3(url, options)
    at_once = ContrastiveViews(url, "train", seed=4, storage_options=options)
    files = len(at_once.files)
    assert files > 2
    fetches = files_per_fetch(monkeypatch)
    monkeypatch.setattr(rowgroups, "FOOTER_BATCH", 2)
    batched = ContrastiveViews(url, "train", seed=4, storage_options=options)
    # The first file's tail (how the files are read), then each batch's tails in one fetch.
    assert fetches == [1] + [2] * (files // 2) + [1] * (files % 2)
    assert batched.keys.equals(at_once.keys) and np.array_equal(batched._rows_by_clip, at_once._rows_by_clip)
    assert_same_index(batched, at_once)
    assert (batched.index.stop > batched.index.start).all()  # the byte ranges fetched from an object store
    values = sorted(int(v1[0, 0, 0]) for v1, _ in batched)
    assert values == sorted(10 * c + batched.version_for(c) for c in range(CLIPS))


def test_contrastive_views_from_s3_with_an_index_cache_read_one_footer(s3_bucket, monkeypatch):
    """A reader whose index is in the cache (on the object store too) reads it in one request instead of
    every file's footer: only the first file's tail is fetched, and the reader is the same."""
    bucket, options, fs = s3_bucket
    url, cache = f"s3://{bucket}/cached-views", f"s3://{bucket}/reader-cache"
    write_views_s3(url, options)
    plain = ContrastiveViews(url, "train", seed=4, storage_options=options)
    # One writer for a bucket's cache, rank 0: another rank makes its reader and writes nothing.
    ContrastiveViews(url, "train", seed=4, storage_options=options, index_cache=cache, rank=1, world_size=2)
    assert not fs.exists(f"{bucket}/reader-cache")
    ContrastiveViews(url, "train", seed=4, storage_options=options, index_cache=cache)
    assert len(fs.ls(f"{bucket}/reader-cache", refresh=True)) == 1
    fetches = files_per_fetch(monkeypatch)
    cached = ContrastiveViews(url, "train", seed=4, storage_options=options, index_cache=cache)
    assert fetches == [1] and len(plain.files) > 2  # the first file's tail; no other footer
    assert cached.keys.equals(plain.keys) and np.array_equal(cached._rows_by_clip, plain._rows_by_clip)
    assert_same_index(cached, plain)
    assert (cached.index.stop > cached.index.start).all()  # the byte ranges kept for ranged reads
    values = sorted(int(v[0, 0, 0]) for v1, _ in DataLoader(cached, batch_size=4, num_workers=2) for v in v1)
    assert values == sorted(10 * c + cached.version_for(c) for c in range(CLIPS))
    # A file of the same reader for the folder's earlier files is removed when the new one is written.
    (name,) = [path.rsplit("/", 1)[1] for path in fs.ls(f"{bucket}/reader-cache", refresh=True)]
    older = f"{bucket}/reader-cache/{name[: name.rindex('-') + 1]}{'0' * 32}.npz"
    fs.pipe(older, b"the index of the files before"), fs.rm(f"{bucket}/reader-cache/{name}")
    ContrastiveViews(url, "train", seed=4, storage_options=options, index_cache=cache)
    assert [path.rsplit("/", 1)[1] for path in fs.ls(f"{bucket}/reader-cache", refresh=True)] == [name]


def test_sat_layout_from_s3_with_workers(s3_bucket, tmp_path):
    bucket, options, _ = s3_bucket
    url = f"s3://{bucket}/latents"
    write_encode(url, 16, storage_options=options)
    local = tmp_path / "latents"
    write_encode(local, 16)
    expected = {md["key"]: z for z, md in EncodedLatents(str(local))}
    dataset = EncodedLatents(url, shuffle=True, storage_options=options)
    got = {}
    for latents, metadata in DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_encoded):
        for z, md in zip(latents, metadata):
            assert md["key"] not in got and md["latent_filename"].startswith("s3://")
            got[md["key"]] = z
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)


def test_batched_rows_from_s3_with_persistent_workers(s3_bucket):
    bucket, options, _ = s3_bucket
    url = f"s3://{bucket}/batched"
    write(url, "rows", generic_rows(), nested=True, one_row_groups=True, index_column="index",
          output_columns=["key", "index", "x"], rows_per_block=10, storage_options=options)  # fmt: skip
    dataset = OutputRows(
        url, fields=("x",), shuffle=True, seed=1, shuffle_buffer=8, storage_options=options, batch_size=8
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(dataset) and all(x.is_shared() for (x,) in batches)
        orders.append([int(v) for (x,) in batches for v in x[:, 0]])
        assert sorted(orders[-1]) == list(range(ROWS))
    assert orders[0] != orders[1]


def test_a_damaged_object_is_named_with_pyarrows_reason(s3_bucket):
    bucket, options, fs = s3_bucket
    url = f"s3://{bucket}/damaged"
    write(url, "rows", generic_rows(), nested=True, one_row_groups=True, index_column="index",
          output_columns=["key", "index", "x"], rows_per_block=10, storage_options=options)  # fmt: skip
    dataset = OutputRows(url, fields=("x",), shuffle=True, seed=1, storage_options=options)
    damaged = dataset.files[1]
    data = bytearray(fs.cat_file(damaged))
    page = pq.read_metadata(pa.BufferReader(bytes(data))).row_group(0).column(2).data_page_offset
    data[page + 2 : page + 32] = b"\xff" * 30  # a tensor page, after the reader was made
    fs.pipe_file(damaged, bytes(data))
    with pytest.raises(UnreadableFile, match=f"reading {re.escape(damaged)}: Couldn't deserialize thrift"):
        list(DataLoader(dataset, batch_size=4, num_workers=2))


def test_a_file_deleted_under_a_reader_on_s3_is_gone_as_locally(s3_bucket):
    """On S3 it was a plain OSError ("reading bucket/...: The specified key does not exist", the s3:// lost), not
    the FileNotFoundError the README tells a training loop to catch and make the reader again on."""
    bucket, options, fs = s3_bucket
    url = f"s3://{bucket}/gone"
    write_views_s3(url, options)
    dataset = ContrastiveViews(url, "train", seed=0, storage_options=options)
    gone = dataset.files[1]
    fs.rm(gone)
    with pytest.raises(
        FileNotFoundError, match=f"reading {re.escape(gone)}: the file is gone: .* make the reader again"
    ):
        list(DataLoader(dataset, batch_size=4, num_workers=0))


def test_an_index_cache_in_a_bucket_that_does_not_exist_is_not_written_and_no_bucket_made(s3_bucket):
    """s3fs's makedirs made the mistyped bucket, and every later reader used it without a word."""
    bucket, options, fs = s3_bucket
    url = f"s3://{bucket}/views"
    write_views_s3(url, options)
    missing = f"no-such-{bucket}"
    with pytest.warns(UserWarning, match=f"reader index cache not written to s3://{missing}/idx .*no bucket"):
        dataset = ContrastiveViews(url, "train", seed=0, storage_options=options, index_cache=f"s3://{missing}/idx")
    assert len(list(DataLoader(dataset, batch_size=4))) > 0
    fs.invalidate_cache()
    assert not fs.exists(missing)


def test_credentials_the_store_refuses_are_named_with_the_output(credential_checking_s3_endpoint):
    """s3fs said only "PermissionError: Forbidden": no output, no hint."""
    options = {"endpoint_url": credential_checking_s3_endpoint}
    with pytest.raises(
        PermissionError, match=r"^s3://views/out: the store refused access \(.*\): check the credentials"
    ):
        ContrastiveViews("s3://views/out", "train", storage_options=options)


def test_a_misspelt_storage_option_is_refused_with_the_option_meant(s3_bucket):
    """`endpoint` for endpoint_url: a raw "AioSession.__init__() got an unexpected keyword argument 'endpoint'"
    (or, with another near miss, an option s3fs takes and ignores); the jobs' configs already said which."""
    bucket, options, _ = s3_bucket
    url = f"s3://{bucket}/views"
    write_views_s3(url, options)
    said = (
        f"{url}: storage_options: endpoint (did you mean endpoint_url?): s3:// knows no such option (s3fs passes "
        "it on, to be ignored or refused)"
    )
    for make in (ContrastiveViews, EncodedLatents, open_encoded):
        with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
            make(url, storage_options={"endpoint": options["endpoint_url"]})
