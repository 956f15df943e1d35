"""The committed-state index: commits fold per-block manifests into ``_manifests/index.parquet``,
later runs read the index plus the manifests written since, and a driver SIGKILLed at any step of
the fold leaves a state the next commit reads and finishes exactly as a clean commit would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_pipelines.engine.manifest import DELETE_BATCH, KILL_AT, OutputState
from ray_pipelines.engine.rewrite import drop_inputs
from ray_pipelines.engine.runner import pending_inputs
from ray_pipelines.engine.state_index import INDEX_FILE
from ray_pipelines.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"k{i:03d}" for i in range(24)]


def part(keys: list[str], expected: int = 2, written=(0, 1), etag: str = "e", errors=()) -> dict:
    return {
        "rank": 0,
        "run_id": "r1",
        "fingerprint": "f" * 8,
        "files": [{"path": f"train/part-{keys[0]}.parquet", "split": "train", "rows": len(keys), "bytes": 1}],
        "inputs": {k: {"expected": expected, "written": list(written), "etag": etag} for k in keys},
        "errors": list(errors),
        "schema": {"x": {"type": "int64"}},
    }


def build(root: Path, blocks: int = 6) -> Storage:
    """Per-block manifests of 4 inputs each (the last block's input k023 with a final error), and
    their data files (empty stand-ins: only their names matter to the commit)."""
    storage = Storage(str(root))
    for b in range(blocks):
        keys = KEYS[4 * b : 4 * b + 4]
        errors = [{"key": "k023", "index": 1, "reason": "silent", "retry": False}] if "k023" in keys else []
        content = part(keys, errors=errors)
        if errors:
            content["inputs"]["k023"]["written"] = [0]
        storage.write_json(f"_manifests/part-{b:04d}.json", content, compact=True)
        storage.write_bytes(f"train/part-{keys[0]}.parquet", b"x")
    return storage


def commit(state: OutputState, keys=KEYS) -> dict:
    return state.commit(
        job="augment",
        fingerprint="f" * 8,
        config={},
        listed=len(keys),
        skipped=0,
        processed_keys=list(keys),
        timings={},
        run_id="r1",
    )


def snapshot(root: Path) -> dict:
    """What a commit leaves, less the times: manifest.json's counts, files and errors; errors.jsonl;
    the committed state as the engine reads it; the files on disk."""
    manifest = json.loads((root / "manifest.json").read_text())
    state = OutputState(Storage(str(root)))
    progress = state.progress()
    return {
        "counts": manifest["counts"],
        "files": manifest["files"],
        "complete": manifest["complete"],
        "errors": (root / "errors.jsonl").read_text(),
        "written": progress.written,
        "final_errors": progress.final_errors,
        "parts": state.live_parts(),
        "on_disk": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
    }


def test_commit_folds_manifests_into_the_index_and_reads_it_back(tmp_path):
    storage = build(tmp_path)
    before = OutputState(storage).progress()
    manifest = commit(OutputState(storage))
    assert manifest["complete"] and manifest["counts"]["inputs_with_output"] == 24
    assert sorted(p.name for p in (tmp_path / "_manifests").iterdir()) == ["index.parquet"]
    after = OutputState(storage).progress()
    assert after.written == before.written and after.final_errors == {"k023": {1: "silent"}}
    assert after.is_done("k023") and after.done_indices("k023") == {0, 1}
    assert not (tmp_path / "_manifests" / "part-0000.json").exists()
    # A manifest written after the fold is read with the index, and an input it finishes is done.
    storage.write_json("_manifests/part-new.json", part(["zz"], expected=1, written=(0,)), compact=True)
    progress = OutputState(storage).progress()
    assert progress.is_done("zz") and len(progress.written) == 25
    selected = pa.table({"key": ["k000", "zz", "new"]})
    assert pending_inputs(selected, progress)["key"].to_pylist() == ["new"]


def test_the_decoded_state_is_let_go_during_a_run_and_decoded_again_from_the_bytes_read(tmp_path):
    """The runner lets go of the decoded index while the run processes: later reads decode the bytes
    read at the start (the file is not read again: here it is gone), and the commit folds as usual."""
    storage = build(tmp_path)
    commit(OutputState(storage))
    storage.write_json("_manifests/part-new.json", part(["zz"], expected=1, written=(0,)), compact=True)
    state = OutputState(storage)
    before = state.progress().written
    state.forget_decoded()
    assert state._index is None and state._progress is None
    index_bytes = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).unlink()
    assert state.progress().written == before and len(before) == 25
    manifest = commit(state, keys=KEYS + ["zz"])
    assert manifest["complete"] and manifest["counts"]["inputs_with_output"] == 25
    assert OutputState(storage).progress().written == before
    assert (tmp_path / INDEX_FILE).read_bytes() != index_bytes  # the new index holds zz


@pytest.mark.parametrize("store", ["local", "s3"])
def test_the_commit_removes_only_data_files_no_manifest_names(request, tmp_path, store):
    """Orphans (a failed attempt's data files, and its temp files) go; named data files, manifests, the
    job's other files and files under a neighbouring prefix stay. On S3 the listing goes page by page
    (more than one)."""
    if store == "s3":
        bucket, options, fs = request.getfixturevalue("s3_bucket")
        root = f"s3://{bucket}/out"
        fs.pipe({f"{bucket}/out-other/train/part-zz.parquet": b"x"})  # shares the prefix "out"
    else:
        root, options = str(tmp_path / "out"), {}
    storage = Storage(root, options)
    for b in range(3):
        keys = KEYS[4 * b : 4 * b + 4]
        storage.write_json(f"_manifests/part-{b:04d}.json", part(keys), compact=True)
        storage.write_bytes(f"train/part-{keys[0]}.parquet", b"x")
    # A writer killed mid-write (its node lost) leaves its data file's and its manifest's temp files.
    orphans = [f"train/part-orphan{i:04d}.parquet" for i in range(1100)] + ["val/part-orphan.parquet"]
    orphans += ["train/part-orphan.parquet.tmp-12-34", "_manifests/part-0003.json.tmp-12-34"]
    if store == "s3":
        fs.pipe({f"{bucket}/out/{rel}": b"x" for rel in orphans})
    else:
        for rel in orphans:
            storage.write_bytes(rel, b"x")
    storage.write_bytes("README.md", b"card")
    storage.write_bytes("train/notes.txt", b"not a data file")
    manifest = commit(OutputState(storage), keys=KEYS[:12])
    assert manifest["counts"]["orphans_removed"] == len(orphans)
    assert sorted(storage.select_files(lambda rel: True)) == sorted(
        [INDEX_FILE, "README.md", "_SUCCESS", "errors.jsonl", "manifest.json", "train/notes.txt"]
        + [f"train/part-{KEYS[4 * b]}.parquet" for b in range(3)]
    )
    if store == "s3":
        assert fs.exists(f"{bucket}/out-other/train/part-zz.parquet")


def test_a_manifest_both_folded_and_present_counts_once(tmp_path):
    storage = build(tmp_path)
    copy = (tmp_path / "_manifests" / "part-0001.json").read_bytes()
    commit(OutputState(storage))
    (tmp_path / "_manifests" / "part-0001.json").write_bytes(copy)  # as a fold killed before deleting it
    progress = OutputState(storage).progress()
    assert progress.duplicates == 0 and progress.written["k004"] == {0, 1} and len(progress.files) == 6


def test_outputs_without_an_index_are_resumed_from_their_manifests(tmp_path):
    """The previous format: pretty-printed manifests, no index. Everything is newer than the index."""
    storage = Storage(str(tmp_path))
    for b in range(3):
        keys = KEYS[4 * b : 4 * b + 4]
        (tmp_path / "_manifests").mkdir(exist_ok=True)
        (tmp_path / "_manifests" / f"part-{b}.json").write_text(json.dumps(part(keys), indent=2, sort_keys=True))
    progress = OutputState(storage).progress()
    assert len(progress.written) == 12 and all(progress.is_done(k) for k in KEYS[:12])
    assert pending_inputs(pa.table({"key": KEYS[:13]}), progress)["key"].to_pylist() == ["k012"]


def test_a_folded_manifest_is_rewritten_and_retired_through_new_manifests(tmp_path):
    from ray_pipelines.engine.sink import ShardSink

    storage = build(tmp_path, blocks=2)
    storage.write_json("_manifests/part-solo.json", part(["solo"]), compact=True)
    commit(OutputState(storage, lambda _: False), keys=KEYS[:8] + ["solo"])
    sink = ShardSink(output=str(tmp_path), storage_options={}, fingerprint="f" * 8, index_column="version",
                     output_columns=[])  # fmt: skip
    sink.drop_from_files = lambda storage, files, keys: files  # the stand-in files hold no rows
    state = OutputState(storage, lambda _: False)
    assert drop_inputs(state, sink, {"k001", "solo"}) == 2
    progress = OutputState(storage).progress()
    assert "k001" not in progress.written and "solo" not in progress.written and "k000" in progress.written
    commit(OutputState(storage, lambda _: False), keys=KEYS[:8])
    progress = OutputState(storage).progress()
    assert sorted(progress.written) == [k for k in KEYS[:8] if k != "k001"]
    assert sorted(p.name for p in (tmp_path / "_manifests").iterdir()) == ["index.parquet"]


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from ray_pipelines.engine import manifest
    from ray_pipelines.storage import Storage
    from tests.test_state_index import commit
    manifest.DELETE_BATCH = 2  # several deletion batches, so a kill can fall between them
    commit(manifest.OutputState(Storage(sys.argv[1])))
    """
)


@pytest.mark.parametrize("step", ["fold:before-index", "fold:after-index", "fold:deleting"])
def test_a_driver_killed_inside_the_fold_leaves_a_state_the_next_commit_finishes(tmp_path, step):
    """A real driver process SIGKILLed at each step of the fold (after replaced manifests went,
    after the index was written, between deletions); a second commit then ends where a clean one does."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    build(clean)
    build(killed)
    # Rows of the second manifest replaced by a rewrite (the replaced one still on disk), so the
    # fold has replaced manifests to delete too.
    storage = Storage(str(killed))
    for root in (clean, killed):
        rewritten = {**part(KEYS[4:8]), "replaces": ["_manifests/part-0001.json"], "run_id": "r1"}
        Storage(str(root)).write_json("_manifests/part-rewritten.json", rewritten, compact=True)
    commit(OutputState(Storage(str(clean))))

    env = {**os.environ, KILL_AT: step, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(killed)], env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == -9  # SIGKILL at the step
    assert not (killed / "manifest.json").exists()
    if step != "fold:before-index":
        assert (killed / INDEX_FILE).exists()
    if step == "fold:deleting":
        left = list((killed / "_manifests").glob("part-*.json"))
        assert 0 < len(left) < 6  # some folded manifests deleted, some still there
    # What the killed fold left reads as the same committed state.
    assert OutputState(storage).progress().written == OutputState(Storage(str(clean))).progress().written
    commit(OutputState(storage))
    assert snapshot(killed) == snapshot(clean)
    assert (killed / INDEX_FILE).read_bytes() == (clean / INDEX_FILE).read_bytes()


def test_the_fold_merges_the_old_index_a_row_group_at_a_time_into_the_same_bytes(tmp_path, monkeypatch):
    """The fold reads the old index a row group at a time and merges the manifests on disk into it:
    with row groups of 7 rows (manifests spanning groups; new manifests sorting before, between and
    after the folded ones; one folded manifest overridden, one replaced, one retired by a tombstone)
    the index holds the live state in the bytes a write of the whole live table gives."""
    from ray_pipelines.engine import state_index
    from ray_pipelines.engine.state_index import decode_index, folded, write_index

    monkeypatch.setattr(state_index, "WRITE_ROWS", 7)
    storage = build(tmp_path)
    commit(OutputState(storage))
    assert pq.ParquetFile(tmp_path / INDEX_FILE).num_row_groups > 3  # manifests span row groups
    tombstone = {"inputs": {}, "errors": [], "files": [], "replaces": ["_manifests/part-0004.json"]}
    new = {
        "_manifests/part-0000a.json": part(["a0", "a1"]),
        "_manifests/part-0002b.json": part(["m0"]),
        "_manifests/part-9.json": part(["z0", "z1", "z2"]),
        "_manifests/part-0003.json": part(["k012", "k013"]),
        "_manifests/part-r.json": {**part(["k004", "k005"]), "replaces": ["_manifests/part-0001.json"]},
        "_manifests/part-t.json": tombstone,
    }
    for name, content in new.items():
        storage.write_json(name, content, compact=True)
    expected_table = folded(OutputState(storage).state_table())  # the live rows, whole
    write_index(Storage(str(tmp_path / "whole")), expected_table)
    state = OutputState(storage)
    before = state.progress()
    state.fold()
    assert (tmp_path / INDEX_FILE).read_bytes() == (tmp_path / "whole" / INDEX_FILE).read_bytes()
    after = OutputState(storage).progress()
    assert_same_state(after, before, KEYS + ["a0", "m0", "z2", "zz"])
    assert "k016" not in after.written and "k006" not in after.written and after.written["k004"] == {0, 1}
    assert len(decode_index((tmp_path / INDEX_FILE).read_bytes())) == len(expected_table)


def test_the_commit_builds_its_state_without_the_identities(tmp_path):
    """Only change detection reads the inputs' identities (240 MB at ten million): a state built
    without them says so when asked, and one asked with them is built again with them."""
    state = OutputState(build(tmp_path))
    bare = state.progress(identities=False)
    with pytest.raises(TypeError, match="identities"):
        bare.etag_array()
    full = state.progress()
    assert full is not bare and full.etags == {k: "e" for k in KEYS}
    assert state.progress(identities=False) is full and full.done_mask(KEYS).all()


def test_delete_batches_are_s3_sized():
    assert DELETE_BATCH == 1000


def plain_model(parts: list[dict]) -> dict[str, dict]:
    """What the manifests say per key, computed the obvious way (a dict and a set per key)."""
    model: dict[str, dict] = {}
    for content in parts:
        for key, info in content["inputs"].items():
            m = model.setdefault(key, {"expected": 0, "written": set(), "done": set(), "etags": set(), "whole": False})
            m["expected"] = max(m["expected"], info["expected"])
            m["written"] |= set(info["written"])
            m["done"] |= set(info["written"])
            m["etags"] |= {info["etag"]} - {""}
        for error in content["errors"]:
            m = model.setdefault(
                error["key"], {"expected": 0, "written": set(), "done": set(), "etags": set(), "whole": False}
            )
            if not error["retry"]:
                if error["index"] < 0:
                    m["whole"] = True
                else:
                    m["done"].add(error["index"])
    return model


@pytest.mark.parametrize("seed", range(12))
def test_the_columnar_state_says_what_a_plain_reading_of_the_manifests_says(seed):
    """Random manifests (keys in several blocks, empty and differing identities, samples written twice,
    written lists out of order or repeating a sample, final and retried errors, keys known only from
    an error row), some read as one table and some added one by one (a chunked table): every per-key
    answer matches the plain model."""
    import random

    from ray_pipelines.engine.committed import MIXED_ETAG, Progress
    from ray_pipelines.engine.state_index import parts_table

    rng = random.Random(seed)
    keys = [f"k{i:03d}" for i in range(60)]
    parts = []
    for b in range(12):
        inputs = {}
        for key in rng.sample(keys[:50], 8):
            expected = rng.choice([1, 3, 5])
            written = sorted(rng.sample(range(expected), rng.randint(0, expected)))
            if written and rng.random() < 0.15:  # not as the sink writes them, but the state must not care
                written = rng.sample(written, len(written)) + rng.sample(written, 1)
            inputs[key] = {"expected": expected, "written": written, "etag": rng.choice(["", "a", "a", "b"])}
        errors = [
            {"key": rng.choice(keys), "index": rng.choice([-1, 0, 1, 2, 4]), "reason": "x", "retry": rng.random() < 0.3}
            for _ in range(rng.randint(0, 4))
        ]
        parts.append({"run_id": f"r{b % 3}", "inputs": inputs, "errors": errors, "files": []})
    progress = Progress(parts_table([(f"_manifests/part-{b:04d}.json", p) for b, p in enumerate(parts[:7])]))
    for b, content in enumerate(parts[7:], start=7):
        progress.add_part(content, f"_manifests/part-{b:04d}.json")

    model = plain_model(parts)
    assert progress.keys.to_pylist() == sorted(model)
    etags = dict(zip(progress.keys.to_pylist(), progress.etag_array().to_pylist()))
    for key, m in model.items():
        assert progress.written_of(key) == m["written"], key
        want_done = m["whole"] or (m["expected"] > 0 and len(m["done"]) >= m["expected"])
        assert progress.is_done(key) == want_done, key
        assert etags[key] == ("" if not m["etags"] else m["etags"].pop() if len(m["etags"]) == 1 else MIXED_ETAG), key
    assert progress.expected == {k: m["expected"] for k, m in model.items() if any(k in p["inputs"] for p in parts)}
    assert progress.done_mask(["unknown"]).tolist() == [False]
    for key, m in model.items():
        assert progress.done_indices(key) - {-1} == m["done"], key
    listed_samples = sum(len(p["inputs"][k]["written"]) for p in parts for k in p["inputs"])
    assert progress.duplicates == listed_samples - sum(len(m["written"]) for m in model.values())
    assert progress.inputs_written() == sum(1 for m in model.values() if m["written"])
    pending = pending_inputs(pa.table({"key": keys}), progress).to_pylist()
    assert [r["key"] for r in pending] == [k for k in keys if not progress.is_done(k)]
    for row in pending:
        done = model.get(row["key"], {"done": set()})["done"]
        assert row["skip"] == sorted(done), row["key"]

    # The same state from row groups of any size (as OutputState reads the index): the same answers.
    whole = progress.table
    cuts = sorted(rng.sample(range(1, whole.num_rows), 5))
    streamed = Progress.from_groups(whole.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, whole.num_rows]))
    assert_same_state(streamed, progress, keys + ["unknown"])


def assert_same_state(a, b, keys: list[str]) -> None:
    assert a.keys.equals(b.keys) and a.etag_array().equals(b.etag_array())
    assert a.done_mask(keys).tolist() == b.done_mask(keys).tolist()
    assert [a.done_indices(k) for k in keys] == [b.done_indices(k) for k in keys]
    assert (a.duplicates, a.inputs_written(), a.written, a.expected) == (
        b.duplicates,
        b.inputs_written(),
        b.written,
        b.expected,
    )
    rows = lambda p: sorted(json.dumps(r, sort_keys=True) for r in p.files + p.error_rows)  # noqa: E731 (any order)
    assert (rows(a), a.final_errors, a.schema) == (rows(b), b.final_errors, b.schema)


@pytest.mark.parametrize("slice_keys", [1, 3, 7, 1000])
def test_key_positions_are_the_same_whatever_the_lookup_ranges(monkeypatch, slice_keys):
    """``Progress.positions`` hashes the smaller side: few queried keys whole (slice 1000), else the
    committed keys a sorted range at a time: every queried key (unsorted, repeated, absent, before
    the first and after the last committed key, empty, null) finds its position either way."""
    from ray_pipelines.engine import committed
    from ray_pipelines.engine.committed import Progress
    from ray_pipelines.engine.state_index import parts_table

    monkeypatch.setattr(committed, "LOOKUP_SLICE", slice_keys)
    keys = [f"k{i:03d}" for i in range(0, 120, 3)]  # 40 committed keys
    part = {"inputs": {k: {"expected": 1, "written": [0], "etag": ""} for k in keys}, "errors": [], "files": []}
    progress = Progress(parts_table([("_manifests/part-0.json", part)]))
    queries = ["k999", "k060", "", "k000", "a", "k061", "k117", "k060", "k118", "k003"]
    want = [keys.index(q) if q in keys else -1 for q in queries]
    assert progress.positions(queries).tolist() == want
    assert progress.positions(pa.chunked_array([queries[:4], queries[4:]])).tolist() == want
    assert progress.positions(pa.array([None, "k003", None])).tolist() == [-1, 1, -1]
    assert progress.positions([]).tolist() == []


def test_the_state_of_a_table_in_sliced_chunks_is_the_state_of_the_whole(tmp_path):
    """Chunks that are slices of one array (their list values share one buffer) give the same state."""
    from ray_pipelines.engine.committed import Progress
    from ray_pipelines.engine.state_index import parts_table

    parts = [
        (f"_manifests/part-{b}.json", part(KEYS[4 * b : 4 * b + 4], expected=3, written=[0, 1, 2][: b % 4]))
        for b in range(6)
    ]
    whole = parts_table(parts).combine_chunks()
    sliced = pa.Table.from_batches([whole.slice(i, 5).to_batches()[0] for i in range(0, whole.num_rows, 5)])
    assert sliced["written"].num_chunks > 1
    a, b = Progress(whole), Progress(sliced)
    assert a.written == b.written and a.expected == b.expected
    assert [a.is_done(k) for k in KEYS] == [b.is_done(k) for k in KEYS]


REWRITE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ray_pipelines.engine.manifest import OutputState
    from ray_pipelines.engine.rewrite import drop_inputs
    from ray_pipelines.engine.sink import ShardSink
    from ray_pipelines.storage import Storage

    out, run = sys.argv[1], sys.argv[2]

    def sink():
        s = ShardSink(output=out, storage_options=None, fingerprint="fp", index_column="index",
                      output_columns=["key", "index", "x"], direct_io=False)
        s.run_id = run
        return s

    def block(keys, etag, value):
        n = 2 * len(keys)
        return {"key": np.repeat(np.array(keys, dtype=object), 2), "index": np.tile(np.arange(2), len(keys)),
                "error": np.array([""] * n, dtype=object), "samples_per_input": np.full(n, 2),
                "etag": np.array([etag] * n, dtype=object), "split": np.array(["train"] * n, dtype=object),
                "x": np.full((n, 3), value, np.float32)}

    state = OutputState(Storage(out))
    state.prepare("sim", "fp", {}, {}, False, run)
    if run == "run2":
        drop_inputs(state, sink(), {"a"})  # 'a' was uploaded again: its old rows leave the output
    if run != "run3":  # run3 commits what the killed run2 wrote
        sink().write_block(block(["a", "b"] if run == "run1" else ["a"], "e-" + run, 1.0 if run == "run1" else 2.0), 0)
    state.commit(job="sim", fingerprint="fp", config={}, listed=2, skipped=0, processed_keys=["a", "b"], timings={},
                 run_id=run, selected_keys=["a", "b"])
    """
)


@pytest.mark.parametrize("step", ["fold:before-index", "fold:after-index"])
def test_a_commit_killed_after_a_rewrite_leaves_every_file_the_last_manifest_names(tmp_path, step):
    """An input uploaded again: the commit deleted its old files (orphans once rewritten) before it wrote the
    new manifest.json, so a kill, a full disk or a stop in between left a complete manifest.json naming
    files that were gone (the readers: FileNotFoundError) until the next run."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-c", REWRITE_SCRIPT, str(out), "run1"], env=env, cwd=ROOT, timeout=120)
    assert first.returncode == 0
    named = [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    killed = subprocess.run(
        [sys.executable, "-c", REWRITE_SCRIPT, str(out), "run2"], env={**env, KILL_AT: step}, cwd=ROOT, timeout=120
    )
    assert killed.returncode == -9
    assert all((out / path).exists() for path in named), named
    again = subprocess.run([sys.executable, "-c", REWRITE_SCRIPT, str(out), "run3"], env=env, cwd=ROOT, timeout=120)
    assert again.returncode == 0
    final = json.loads((out / "manifest.json").read_text())
    assert final["complete"] and final["counts"]["duplicates"] == 0 and final["counts"]["rows_written"] == 4
    assert all((out / f["path"]).exists() for f in final["files"])
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("train/part-*"))
    assert on_disk == sorted(f["path"] for f in final["files"])  # the old files went with the next commit
