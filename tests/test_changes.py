"""Change detection and taking committed inputs out of an output, without Ray: identities,
new/changed/deleted counts, rewritten Parquet files and per-sample files, replaced manifests."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from ray_pipelines.encoders.sat_sink import SatSink, is_encode_data_file
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.changes import detect_changes, identity_changed
from ray_pipelines.engine.manifest import OutputState, Progress
from ray_pipelines.engine.rewrite import drop_inputs
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.jobs.features import FeaturesJob
from ray_pipelines.sources import InputItem
from ray_pipelines.storage import Storage


def test_identities_compare_etags_and_mtime_size_and_accept_older_bare_mtimes():
    assert not identity_changed("abc", "abc")
    assert identity_changed("abc", "abd")
    assert identity_changed("1700000000.5/100", "1700000000.5/120")  # same mtime, other size
    assert not identity_changed("1700000000.5", "1700000000.5/100")  # written before sizes were recorded
    assert identity_changed("1700000000.5", "1700000001.5/100")
    assert not identity_changed("", "x") and not identity_changed("x", "")  # nothing to compare


def test_detect_changes_counts_new_changed_deleted_and_unchanged():
    progress = Progress()
    for key, etag in (("a", "1"), ("b", "2"), ("c", "3"), ("d", "")):
        progress.add_part({"inputs": {key: {"expected": 1, "written": [0], "etag": etag}}})
    listed = [InputItem(key, key, 1, etag=etag) for key, etag in (("a", "1"), ("b", "9"), ("d", "7"), ("e", "5"))]
    changes = detect_changes(listed, progress)
    assert (changes.new, changes.unchanged, changes.changed, changes.deleted) == (1, 2, ["b"], ["c"])
    assert changes.stale("reprocess", "keep") == {"b"} and changes.stale("keep", "prune") == {"c"}
    assert changes.report("keep", "keep")["kept_stale"] == {"changed": ["b"], "deleted": ["c"]}


def test_inputs_a_run_does_not_select_are_left_out_not_new_and_committed_ones_not_deleted():
    """A keep list (or limit) takes some of the listed inputs: the others are not new work on every
    run, and those committed by an earlier, wider run still exist (their rows are not deleted)."""
    import pyarrow as pa

    progress = Progress()
    for key in ("a", "b"):
        progress.add_part({"inputs": {key: {"expected": 1, "written": [0], "etag": key}}})
    listed = [InputItem(key, key, 1, etag=key) for key in ("a", "b", "c", "d", "e")]
    changes = detect_changes(listed, progress, selected=pa.array(["a", "c"]))
    assert (changes.new, changes.left_out, changes.unchanged, changes.changed, changes.deleted) == (1, 2, 2, [], [])
    report = changes.report("reprocess", "prune")
    assert report["new"] + report["left_out"] + report["changed"] + report["unchanged"] == len(listed)
    everything = detect_changes(listed, progress, selected=pa.array(["a", "b", "c", "d", "e"]))
    assert (everything.new, everything.left_out) == (3, 0) == (detect_changes(listed, progress).new, 0)
    # a changed input the run does not take keeps its rows until a run takes it (they were taken out,
    # and the input not processed: it had no rows at all)
    listed[1] = InputItem("b", "b", 1, etag="b, uploaded again")
    changes = detect_changes(listed, progress, selected=pa.array(["a", "c"]))
    assert (changes.new, changes.left_out, changes.unchanged, changes.changed) == (1, 3, 1, [])
    assert changes.stale("reprocess", "prune") == set()
    taken = detect_changes(listed, progress, selected=pa.array(["b", "c"]))
    assert (taken.new, taken.left_out, taken.unchanged, taken.changed) == (1, 2, 1, ["b"])
    assert taken.stale("reprocess", "keep") == {"b"}


def test_an_input_committed_from_two_versions_counts_as_changed():
    progress = Progress()
    progress.add_part({"inputs": {"a": {"expected": 2, "written": [0], "etag": "old"}}})
    progress.add_part({"inputs": {"a": {"expected": 2, "written": [1], "etag": "new"}}})
    assert detect_changes([InputItem("a", "a", 1, etag="new")], progress).changed == ["a"]


def test_what_a_tar_shard_written_again_no_longer_gives_is_changed_not_deleted():
    """One side is always the shard's own key (its "unreadable" error row): a shard that reads now, or one
    that no longer does. A folder named like a shard, or a shard whose content did not change, keeps the
    plain rule: keys no longer listed are deleted."""
    progress = Progress()
    committed = {"s/a.tar": "v1", "s/a.tar/0.flac": "v1", "b.tar/0.flac": "w1", "b.tar/1.flac": "w1"}
    committed |= {"dir.tar/x.flac": "x1", "same.tar": "u1", "UP.TAR": "t1"}
    for key, etag in committed.items():
        progress.add_part({"inputs": {key: {"expected": 1, "written": [0], "etag": etag}}})
    listed = [
        InputItem("s/a.tar/0.flac", "u", 1, etag="v2"),  # a.tar reads now: its own error row goes
        InputItem("s/a.tar/1.flac", "u", 1, etag="v2"),
        InputItem("b.tar", "u", 1, etag="w2", error="unreadable tar shard: ..."),  # b.tar no longer reads
        InputItem("dir.tar/y.flac", "u", 1, etag="y1"),  # a folder: x.flac was deleted
        InputItem("same.tar/0.flac", "u", 1, etag="u1"),  # the same shard: not written again
        InputItem("UP.TAR/0.flac", "u", 1, etag="t2"),  # sources take .TAR too
    ]
    changes = detect_changes(listed, progress)
    assert changes.changed == ["UP.TAR", "b.tar/0.flac", "b.tar/1.flac", "s/a.tar", "s/a.tar/0.flac"]
    assert changes.deleted == ["dir.tar/x.flac", "same.tar"] and (changes.new, changes.unchanged) == (5, 0)


def test_a_deleted_input_committed_only_as_a_retryable_error_leaves_whatever_on_delete_says():
    """An input missing when listed (a broken link) or lost is a retryable error row, so its run exits 3;
    deleted since, it kept that "retry" row in a complete output's errors.jsonl for good (on_delete: keep
    keeps rows, and it has none). One with rows keeps them, an old retry row of its healed or not."""
    progress = Progress()
    missing = {"key": "gone.flac", "index": -1, "reason": "missing: broken symlink to x", "retry": True}
    healed = {"key": "healed.flac", "index": -1, "reason": "read failed: timeout", "retry": True}
    for key, written, errors in (("gone.flac", [], [missing]), ("healed.flac", [0], [healed]), ("kept.flac", [0], [])):
        progress.add_part({"inputs": {key: {"expected": 1, "written": written, "etag": "e"}}, "errors": errors})
    changes = detect_changes([InputItem("new.flac", "u", 1, etag="n")], progress)
    assert changes.deleted == ["gone.flac", "healed.flac", "kept.flac"]
    assert changes.deleted_unretried == ["gone.flac"]
    assert changes.stale("reprocess", "keep") == {"gone.flac"}
    report = changes.report("reprocess", "keep")
    assert report["kept_stale"] == {"deleted": ["healed.flac", "kept.flac"]}
    assert (report["deleted"], report["deleted_unretried"]) == (3, 1)  # 2 said kept in the warning
    assert changes.stale("reprocess", "prune") == {"gone.flac", "healed.flac", "kept.flac"}


def commit(state: OutputState) -> dict:
    return state.commit(
        job="augment", fingerprint="f" * 64, config={}, listed=0, skipped=0, processed_keys=[], timings={}
    )


def batch(keys, indices, key_column="key", index_column="version", errors=None, etag="e") -> dict[str, np.ndarray]:
    n = len(keys)
    columns = {
        "key": np.array(keys, dtype=object),
        index_column: np.array(indices),
        "view1": np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3) + np.array(indices).reshape(n, 1, 1, 1),
        "error": np.array(errors or [""] * n, dtype=object),
        "split": np.array(["train"] * n, dtype=object),
        "samples_per_input": np.full(n, 2),
        "etag": np.array([etag] * n, dtype=object),
    }
    if key_column != "key":
        columns[key_column] = columns["key"].copy()
    return columns


def views_sink(tmp_path) -> ShardSink:
    """The sink of an augment-like output of ``view1`` rows, 3 to a file."""
    return ShardSink(
        output=str(tmp_path),
        storage_options=None,
        fingerprint="f" * 64,
        index_column="version",
        output_columns=["key", "version", "view1"],
        rows_per_file=3,
    )


def test_dropping_inputs_rewrites_their_files_and_switches_manifests(tmp_path):
    state = OutputState(Storage(str(tmp_path)))
    run_id = state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
    sink = views_sink(tmp_path)
    sink.run_id = run_id
    sink.write_rows(batch(["a", "a", "b", "b", "c"], [0, 1, 0, 1, 0], errors=["", "", "", "", "silent"]), rank=0)
    sink.write_rows(batch(["d", "d"], [0, 1]), rank=1)
    before = {p.name for p in tmp_path.glob("train/*.parquet")}
    assert len(before) == 3  # a0 a1 b0 | b1 | d0 d1

    rewritten = drop_inputs(state, sink, {"b", "c", "d"})
    assert rewritten == 2
    parts = state.live_parts()
    assert len(parts) == 1 and len(state.read_parts()) == 1  # the old manifests are gone
    ((name, part),) = parts.items()
    assert set(part["inputs"]) == {"a"} and part["errors"] == [] and len(part["replaces"]) == 1
    # The old files stay until the commit (the last manifest.json still names them), then go.
    assert before < {p.name for p in tmp_path.glob("train/*.parquet")}
    commit(state)
    files = sorted(tmp_path.glob("train/*.parquet"))
    assert [f.name for f in files] == [part["files"][0]["path"].split("/")[-1]] and files[0].name not in before
    table = pq.read_table(files[0])
    assert list(zip(table["key"].to_pylist(), table["version"].to_pylist())) == [("a", 0), ("a", 1)]
    assert table.schema.metadata[b"ray_pipelines.fingerprint"] == b"f" * 64
    original = batch(["a", "a"], [0, 1])["view1"]
    np.testing.assert_array_equal(column_to_numpy(table["view1"]), original)
    progress = state.progress()
    assert progress.written == {"a": {0, 1}} and not progress.final_errors
    # Folded into the index at the commit: the same manifest, less what it replaced (deleted by now).
    committed = state.live_parts()
    assert committed == {name: {k: v for k, v in part.items() if k != "replaces"}}

    # The same drop again changes nothing (a rerun after a kill writes the same names).
    assert drop_inputs(state, sink, {"b", "c", "d"}) == 0 and state.live_parts() == committed


def test_a_changed_input_written_again_as_before_is_committed_with_its_new_rows(tmp_path):
    """A re-recorded file whose new rows are the very (key, sample) set its old block held (one input
    alone, or one piece of a long one): its new manifest took the old one's name, which the drop had
    retired, so the new rows counted for nothing and the run ended incomplete with the input lost."""
    state = OutputState(Storage(str(tmp_path)))
    sink = views_sink(tmp_path)
    sink.run_id = state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
    sink.write_rows(batch(["d", "d"], [0, 1], etag="take-1"), rank=0)
    commit(state)
    (old_file,) = tmp_path.glob("train/*.parquet")
    sink.run_id = state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
    drop_inputs(state, sink, {"d"})  # changed: its rows leave, then it is processed again
    new_rows = batch(["d", "d"], [0, 1], etag="take-2")
    new_rows["view1"] = -new_rows["view1"]
    sink.write_rows(new_rows, rank=0)
    assert state.progress().written == {"d": {0, 1}}
    assert commit(state)["complete"]
    (new_file,) = tmp_path.glob("train/*.parquet")
    assert new_file.name != old_file.name  # a reader of the old commit finds its file gone, never new rows
    np.testing.assert_array_equal(column_to_numpy(pq.read_table(new_file)["view1"]), new_rows["view1"])


def test_a_replaced_manifest_counts_for_nothing_even_before_it_is_deleted(tmp_path):
    state = OutputState(Storage(str(tmp_path)))
    state.prepare("augment", "f" * 64, {}, {}, overwrite=False)
    storage = state.storage
    storage.write_json("_manifests/part-old.json", {"inputs": {"a": {"expected": 1, "written": [0]}}, "files": []})
    storage.write_json(
        "_manifests/part-new.json",
        {"inputs": {"b": {"expected": 1, "written": [0]}}, "files": [], "replaces": ["_manifests/part-old.json"]},
    )
    assert set(state.progress().written) == {"b"}
    manifest = commit(state)
    assert not storage.exists("_manifests/part-old.json") and manifest["complete"]


def test_per_sample_files_leave_with_their_json_partners(tmp_path):
    state = OutputState(Storage(str(tmp_path)), is_encode_data_file)
    run_id = state.prepare("encode", "f" * 64, {}, {}, overwrite=False)
    sink = SatSink(
        output=str(tmp_path),
        storage_options=None,
        fingerprint="f" * 64,
        index_column="window",
        output_columns=["key", "window", "latents"],
    )
    sink.run_id = run_id
    rows = batch(["a", "b"], [0, 0], index_column="window")
    rows["latents"] = rows.pop("view1").reshape(2, 2, 3)
    rows["padding_mask"] = np.ones((2, 3), dtype=np.int64)
    sink.write_rows(rows, rank=4)
    assert len(list(tmp_path.glob("train/4/*"))) == 4
    drop_inputs(state, sink, {"b"})
    commit(state)
    (part,) = state.live_parts().values()
    left = sorted(p.name for p in tmp_path.glob("train/4/*"))
    assert sorted(f["path"].split("/")[-1] for f in part["files"]) == left and len(left) == 2
    assert {f.get("key") for f in part["files"]} == {"a", None}


def test_features_rows_are_found_by_their_path_column(tmp_path):
    state = OutputState(Storage(str(tmp_path)))
    run_id = state.prepare("features", "f" * 64, {}, {}, overwrite=False)
    sink = ShardSink(  # as FeaturesJob.make_sink makes it: the song's key is its `path` column
        output=str(tmp_path),
        storage_options=None,
        fingerprint="f" * 64,
        index_column="snippet",
        output_columns=["input_values", "path", "snippet"],
        key_column=FeaturesJob.key_column,
    )
    sink.run_id = run_id
    rows = batch(["x/1.mp3", "x/1.mp3", "y/2.mp3"], [0, 1, 0], key_column="path", index_column="snippet")
    rows["input_values"] = rows.pop("view1").reshape(3, 2, 3)
    sink.write_rows(rows, rank=0)
    drop_inputs(state, sink, {"x/1.mp3"})
    commit(state)
    (table_path,) = tmp_path.glob("train/*.parquet")
    assert pq.read_table(table_path)["path"].to_pylist() == ["y/2.mp3"]


def test_every_input_a_run_takes_out_is_named_before_it_leaves():
    """The stale groups the run's warning names are the keys it takes out (on_delete: keep still takes out a
    deleted input committed only as a retryable error: no run can retry it)."""
    import logging

    from ray_pipelines.engine.changes import InputChanges
    from ray_pipelines.engine.runner import _warn_taken_out
    from tests.conftest import Lines

    changes = InputChanges(changed=["a.wav"], deleted=["b.wav", "c.wav"], deleted_unretried=["c.wav"])
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.runner")
    logger.addHandler(said)
    try:
        for on_change, on_delete in (("reprocess", "keep"), ("keep", "prune")):
            _warn_taken_out("augment", changes, on_change, on_delete)
            named = {key for _, keys in changes.stale_groups(on_change, on_delete) for key in keys}
            assert named == changes.stale(on_change, on_delete)
    finally:
        logger.removeHandler(said)
    assert changes.stale("reprocess", "keep") == {"a.wav", "c.wav"}
    assert said.lines == [
        "augment: 1 changed inputs' old rows leave the output, to be processed again: a.wav",
        "augment: 1 deleted inputs committed only as retryable errors leave the output: c.wav",
        "augment: 2 deleted inputs leave the output (on_delete: prune): b.wav, c.wav",
    ]
