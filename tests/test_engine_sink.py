"""The shard sink and the commit without Ray: content names, manifests, the run fence."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_pipelines.engine.manifest import OutputConflict, OutputState
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.storage import Storage
from tests.conftest import Lines


def rows(keys, versions, error=None) -> dict[str, np.ndarray]:
    n = len(keys)
    return {
        "key": np.array(keys, dtype=object),
        "version": np.array(versions),
        "view1": np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3),
        "error": np.array(error or [""] * n, dtype=object),
        "split": np.array(["train"] * n, dtype=object),
        "samples_per_input": np.full(n, 2),
        "etag": np.array(["e"] * n, dtype=object),
    }


def sink(out) -> ShardSink:
    return ShardSink(
        output=str(out),
        storage_options=None,
        fingerprint="f" * 64,
        index_column="version",
        output_columns=["key", "version", "view1"],
    )


def prepare(out) -> tuple[OutputState, str]:
    state = OutputState(Storage(str(out)))
    return state, state.prepare("augment", "f" * 64, {}, {}, overwrite=False)


def test_names_come_from_content_and_rows_are_sorted(tmp_path):
    state, run_id = prepare(tmp_path)
    a, b = sink(tmp_path), sink(tmp_path)
    a.run_id = b.run_id = run_id
    a.write_rows(rows(["b", "a", "a"], [0, 1, 0]), rank=0)
    first = sorted(p.name for p in tmp_path.glob("train/*.parquet"))
    b.write_rows(rows(["a", "b", "a"], [0, 0, 1]), rank=7)  # same rows, other order and rank
    assert sorted(p.name for p in tmp_path.glob("train/*.parquet")) == first
    metadata = pq.ParquetFile(tmp_path / "train" / first[0]).metadata
    assert {metadata.row_group(0).column(i).compression for i in range(3)} == {"LZ4"}  # the default codec
    # Statistics for the scalar columns (readers can skip row groups by key), none for tensor values.
    stats = {
        metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).statistics
        for i in range(metadata.num_columns)
    }
    assert stats["key"].min == "a" and stats["key"].max == "b" and stats["version"].max == 1
    assert stats["view1.list.element.list.element.list.element"] is None
    table = pq.read_table(tmp_path / "train" / first[0])
    assert list(zip(table.column("key").to_pylist(), table.column("version").to_pylist())) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
    ]
    progress = state.progress()
    assert progress.written == {"a": {0, 1}, "b": {0}} and progress.is_done("a") and not progress.is_done("b")


def test_a_stale_run_commits_nothing_and_its_files_are_removed(tmp_path):
    state, old_run = prepare(tmp_path)
    stale = sink(tmp_path)
    stale.run_id = old_run
    state.prepare("augment", "f" * 64, {}, {}, overwrite=False)  # a new run takes over
    result = stale.write_rows(rows(["a", "a"], [0, 1]), rank=0)
    assert result["fenced"] and not list((tmp_path / "_manifests").glob("*.json"))
    assert len(list(tmp_path.glob("train/*.parquet"))) == 1  # written, but committed by no manifest
    manifest = state.commit(
        job="augment", fingerprint="f" * 64, config={}, listed=1, skipped=0, processed_keys=["a"], timings={}
    )
    assert not list(tmp_path.glob("train/*.parquet"))
    assert manifest["counts"]["orphans_removed"] == 1 and manifest["counts"]["lost"] == 1


class LeaseLost(Exception):
    pass


@pytest.mark.parametrize("lost_meanwhile", [False, True])
def test_success_follows_the_derived_files_and_a_lease_lost_meanwhile_writes_no_success(tmp_path, lost_meanwhile):
    """The job's derived files (the dataset card, the score job's lists) are written at commit, before
    _SUCCESS; a lease taken over while they were written (the score job reads every score) stops the
    commit before _SUCCESS."""
    state, run_id = prepare(tmp_path)
    written = sink(tmp_path)
    written.run_id = run_id
    written.write_rows(rows(["a", "a"], [0, 1]), rank=0)  # both of its samples: complete
    seen, holds = [], [True]

    def still_holds() -> None:
        if not holds[0]:
            raise LeaseLost

    def derived(manifest: dict) -> None:
        seen.append((manifest["complete"], (tmp_path / "_SUCCESS").exists()))
        holds[0] = not lost_meanwhile

    try:
        state.commit(
            job="augment",
            fingerprint="f" * 64,
            config={},
            listed=1,
            skipped=0,
            processed_keys=["a"],
            timings={},
            still_holds=still_holds,
            write_derived=derived,
        )
    except LeaseLost:
        assert lost_meanwhile
    assert seen == [(True, False)] and (tmp_path / "_SUCCESS").exists() is not lost_meanwhile


def test_a_claim_that_committed_nothing_is_taken_by_another_job_or_config_and_one_that_did_is_not(tmp_path):
    """A run that stopped before its first block (its input matched nothing, its listing failed) left
    only its claim; before, the corrected rerun was refused unless it passed --overwrite."""
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.manifest")
    logger.addHandler(said)
    try:
        OutputState(Storage(str(tmp_path))).prepare("features", "a" * 64, {}, {"n_mels": 128}, overwrite=False)
        (tmp_path / "labels.json").write_text("{}")  # what the features job writes as it lists
        state, run_id = prepare(tmp_path)  # the augment job
        assert json.loads((tmp_path / "_job.json").read_text())["job"] == "augment"
        assert not (tmp_path / "labels.json").exists()
        assert said.lines == [
            f"output {tmp_path} was claimed by a features job's run that committed nothing: this run takes it"
        ]
        state.prepare("augment", "b" * 64, {}, {"n_mels": 64}, overwrite=False)  # another config, nothing committed
        assert "another config (changed: n_mels)" in said.lines[-1]
        state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
        written = sink(tmp_path)
        written.run_id = json.loads((tmp_path / "_job.json").read_text())["run_id"]
        written.write_rows(rows(["a"], [0]), rank=0)  # one block's manifest: the output holds rows now
        for job, fingerprint, refusal in (
            ("features", "a" * 64, "holds the augment job's data"),
            ("augment", "b" * 64, "another config"),
        ):
            with pytest.raises(OutputConflict, match=refusal):
                OutputState(Storage(str(tmp_path))).prepare(job, fingerprint, {}, {}, overwrite=False)
        state.commit(
            job="augment", fingerprint="f" * 64, config={}, listed=1, skipped=0, processed_keys=["a"], timings={}
        )
        assert not list((tmp_path / "_manifests").glob("part-*.json"))  # folded into the index
        with pytest.raises(OutputConflict, match="another config"):
            OutputState(Storage(str(tmp_path))).prepare("augment", "b" * 64, {}, {}, overwrite=False)
        assert len(said.lines) == 3  # the two take-overs above and the return to "f"
    finally:
        logger.removeHandler(said)


def test_a_folder_with_data_of_its_own_is_refused_and_one_with_only_hidden_names_or_its_marker_is_taken(
    tmp_path, s3_bucket
):
    """A folder made for the output (by Finder: .DS_Store; in git: .gitkeep; by the S3 console's "Create
    folder": an empty ``out/`` object) is empty; another's data is not, and is left alone."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflict, match=r"is not empty and was not written by ray-pipelines; choose another"):
        prepare(tmp_path / "theirs")
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]

    (tmp_path / "made").mkdir()
    for name in (".DS_Store", ".gitkeep"):
        (tmp_path / "made" / name).write_bytes(b"")
    state, run_id = prepare(tmp_path / "made")
    assert run_id and (tmp_path / "made" / ".DS_Store").exists() and (tmp_path / "made" / "_job.json").exists()

    bucket, options, fs = s3_bucket
    fs.call_s3("put_object", Bucket=bucket, Key="out/", Body=b"")
    assert fs.ls(f"{bucket}/out", detail=False) == [f"{bucket}/out/"]  # the marker, listed in its folder
    state = OutputState(Storage(f"s3://{bucket}/out", {"client_kwargs": {"endpoint_url": options["endpoint_url"]}}))
    assert state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
    assert fs.exists(f"{bucket}/out/_job.json")


def test_error_rows_go_to_the_manifest_not_the_data(tmp_path):
    state, run_id = prepare(tmp_path)
    s = sink(tmp_path)
    s.run_id = run_id
    s.write_rows(rows(["a", "a"], [0, 1], error=["", "silent: peak -120.0 dBFS is below -90 dBFS"]), rank=0)
    table = pq.read_table(next(tmp_path.glob("train/*.parquet")))
    assert table.num_rows == 1
    progress = state.progress()
    assert progress.final_errors == {"a": {1: "silent: peak -120.0 dBFS is below -90 dBFS"}}
    assert progress.is_done("a")  # one written, one failed for good: nothing left to do


def chunk_pages(path, group: int, column: int) -> list[tuple[int, int]]:
    """(values, encoding) of each data page of a column chunk, from the page headers themselves."""
    from ray_pipelines.readers.pages import load_kernels
    from ray_pipelines.readers.rowgroups import chunk_range

    chunk = pq.read_metadata(path).row_group(group).column(column)
    start, length = chunk_range(chunk)
    with open(path, "rb") as f:
        f.seek(start)
        raw = np.frombuffer(f.read(length), dtype=np.uint8)
    pages, at = [], 0
    while at < length:
        end, _, _, size, values, encoding = load_kernels().page_header(raw, at)
        pages.append((int(values), int(encoding)))
        at = end + size
    return pages


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_row_groups_of_a_few_rows_hold_each_tensor_chunk_in_one_page(tmp_path, compression):
    """A job whose every row each epoch reads asks for row groups of 2 MiB: 6 rows of 320 KB here, each
    tensor chunk one page (pyarrow's own limit would cut 1.9 MB in two), its floats PLAIN when
    uncompressed (the readers take them in place) and byte-stream-split under a codec."""
    from ray_pipelines.engine.arrow import column_to_numpy
    from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES

    n = 15
    data = {
        "key": np.array([f"k{i:02d}" for i in range(n)], dtype=object),
        "version": np.zeros(n, dtype=np.int64),
        "view1": np.random.default_rng(0).standard_normal((n, 1, 200, 400)).astype(np.float32),
        "error": np.full(n, "", dtype=object),
        "split": np.full(n, "train", dtype=object),
        "samples_per_input": np.ones(n, dtype=np.int64),
    }
    state, run_id = prepare(tmp_path)
    writer = ShardSink(
        output=str(tmp_path), storage_options=None, fingerprint="f" * 64, index_column="version",
        output_columns=["key", "version", "view1"], compression=compression,
        row_group_bytes=WHOLE_READ_ROW_GROUP_BYTES,
    )  # fmt: skip
    writer.run_id = run_id
    writer.write_rows(data, rank=0)
    (path,) = tmp_path.glob("train/*.parquet")
    metadata = pq.read_metadata(path)
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [6, 6, 3]
    plain, byte_stream_split = 0, 9  # Parquet's encodings
    for g, rows_in_group in enumerate([6, 6, 3]):
        assert chunk_pages(path, g, 2) == [
            (rows_in_group * 80_000, plain if compression == "none" else byte_stream_split)
        ]
    np.testing.assert_array_equal(column_to_numpy(pq.read_table(path).column("view1")), data["view1"])


def test_byte_stream_split_goes_to_float_tensor_values_only():
    import pyarrow as pa

    from ray_pipelines.engine.arrow import column_array
    from ray_pipelines.engine.sink import float_tensor_leaves

    x = np.zeros((2, 4, 3), dtype=np.float32)
    schema = pa.schema(
        [
            ("mel", column_array(x[:, None]).type),
            ("features", column_array(x).type),
            ("latents16", column_array(x.astype(np.float16)).type),
            ("tokens", column_array(x.astype(np.int64)).type),
            ("score", pa.float64()),
        ]
    )
    # Parquet leaf paths (what pyarrow's use_byte_stream_split matches); float16 and integer
    # tensors stay plain so readers older than format 2.11 can read them.
    assert float_tensor_leaves(schema) == [
        "mel.list.element.list.element.list.element",
        "features.list.element.list.element",
    ]


def test_an_output_named_with_brackets_commits_and_removes_its_own_files_only(tmp_path, s3_bucket):
    """fsspec's cat and rm of a list (and rm of a folder) take [ ] * ? for a pattern: every commit of an
    output named "views [v2]" failed with FileNotFoundError, and on S3 a removal under it matched
    "views 2/", another folder, and left its own."""
    from bench.readers import write_output

    rows = {"key": np.array(["a", "b"], dtype=object), "index": np.arange(2), "x": np.ones((2, 3), np.float32)}
    manifest = write_output(tmp_path / "views [v2]", "rows", rows, index_column="index", output_columns=["key", "x"])
    assert manifest["complete"] and (tmp_path / "views [v2]" / "_SUCCESS").exists()

    bucket, options, fs = s3_bucket
    for key in (
        "views [v2]/train/a.parquet",
        "views [v2]/train/b.parquet",
        "views [v2]/x.json",
        "views 2/train/a.parquet",
    ):
        fs.pipe(f"{bucket}/{key}", key.encode())
    storage = Storage(f"s3://{bucket}/views [v2]", {"client_kwargs": {"endpoint_url": options["endpoint_url"]}})
    assert storage.cat_many(["x.json", "train/a.parquet"]) == {
        "x.json": b"views [v2]/x.json",
        "train/a.parquet": b"views [v2]/train/a.parquet",
    }
    storage.remove("train")
    storage.remove_many(["x.json", "gone.json"])  # one that is not there is fine
    fs.invalidate_cache()
    assert fs.find(bucket) == [f"{bucket}/views 2/train/a.parquet"]


def test_overwrite_replaces_another_configs_output_and_resumes_this_ones(tmp_path):
    """--overwrite emptied the output whatever its config: a nightly command that kept the flag after a
    config change restarted from nothing on every run, and "rerun to resume" after a stop threw away
    every committed input."""
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.manifest")
    logger.addHandler(said)
    try:
        state, run_id = prepare(tmp_path)
        written = sink(tmp_path)
        written.run_id = run_id
        written.write_rows(rows(["a"], [0]), rank=0)
        state.commit(
            job="augment", fingerprint="f" * 64, config={}, listed=1, skipped=0, processed_keys=["a"], timings={}
        )
        committed = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
        assert committed
        OutputState(Storage(str(tmp_path))).prepare("augment", "f" * 64, {}, {}, overwrite=True)  # same config
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == committed
        assert "--overwrite has nothing to replace, the run resumes it" in said.lines[-1]
        OutputState(Storage(str(tmp_path))).prepare("augment", "b" * 64, {}, {}, overwrite=True)  # another config
        assert not list(tmp_path.rglob("*.parquet"))
    finally:
        logger.removeHandler(said)
