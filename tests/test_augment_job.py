"""The augment job end to end on a real local Ray: outputs, errors, determinism, resume."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import column_to_numpy, tensor_type
from ray_pipelines.engine.manifest import OutputConflict
from ray_pipelines.engine.progress import ProgressDisplay
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from tests.audio_helpers import copy_shared, encoded_bytes, make_library, tone, write_audio, write_tar
from tests.killed_run import run_killed_at_first_block

SMALL = dict(
    num_versions=2,
    duration=1.0,
    sample_rate=16000,
    n_mels=32,
    n_fft=512,
    hop_length=256,
    batch_size=4,
    inputs_per_block=2,
    seed=3,
)


def config(input_dir, output, **overrides) -> AugmentConfig:
    return validate_config(AugmentConfig, {"input": str(input_dir), "output": str(output), **SMALL, **overrides})


def rows_by_key(output: Path) -> dict[tuple[str, int], tuple[bytes, bytes, str]]:
    """Every (key, version) row's view bytes and split, read with plain pyarrow."""
    rows = {}
    for path in sorted(output.glob("*/part-*.parquet")):
        table = pq.read_table(path)
        view1 = column_to_numpy(table.column("view1"))
        view2 = column_to_numpy(table.column("view2"))
        for i, (key, version) in enumerate(zip(table.column("key").to_pylist(), table.column("version").to_pylist())):
            assert (key, version) not in rows, f"duplicate row {key} v{version}"
            rows[(key, version)] = (view1[i].tobytes(), view2[i].tobytes(), path.parent.name)
    return rows


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Real recordings, generated tones in four formats, and one long file."""
    root = tmp_path_factory.mktemp("clips")
    copy_shared(root / "real", limit_per_folder=1)
    make_library(root / "gen", n_per_format=1, seconds=1.5)
    write_audio(root / "gen" / "long.flac", tone(20.0, 22050, freq=150.0), 22050)
    return root


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory, ray_local) -> tuple[Path, dict]:
    """An uninterrupted run with one actor: the reference every other run must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    result = run_job(AugmentJob(config(clips, out, actors=1)), progress=False)
    return out, result.manifest


def test_outputs_layout_shapes_and_manifest(reference, clips):
    out, manifest = reference
    n_inputs = len([p for p in clips.rglob("*.*")])
    assert (out / "_SUCCESS").exists() and (out / "manifest.json").exists()
    counts = manifest["counts"]
    assert counts["listed"] == n_inputs and counts["errors"] == 0 and counts["duplicates"] == 0
    assert counts["rows_written"] == 2 * n_inputs == sum(manifest["splits"].values())
    assert set(manifest["splits"]) <= {"train", "val"}
    assert manifest["schema"]["view1"] == {"type": "tensor", "dtype": "float32", "shape": [1, 32, 63]}
    assert manifest["versions"]["ray"] == "2.60.0" and len(manifest["fingerprint"]) == 64

    path = sorted(out.glob("train/part-*.parquet"))[0]
    table = pq.read_table(path)
    assert table.column_names == ["key", "version", "view1", "view2", "source"]
    assert table.schema.field("view1").type == tensor_type(pa.float32(), [1, 32, 63])  # nested fixed-size lists
    views = column_to_numpy(table.column("view1"))
    assert views.shape == (table.num_rows, 1, 32, 63) and np.isfinite(views).all()
    assert table.column("source").to_pylist()[0].startswith(str(clips))
    # Float tensors are stored byte-stream-split (smaller, faster to read); scalars dictionary-encoded.
    encodings = {
        c.path_in_schema: c.encodings for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(4))
    }
    leaf = "view1" + ".list.element" * 3
    assert "BYTE_STREAM_SPLIT" in encodings[leaf] and "RLE_DICTIONARY" in encodings["key"]
    # Every file is named in manifest.json.
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {str(p.relative_to(out)) for p in out.glob("*/part-*.parquet")}
    # The per-rank manifests were folded into the committed-state index and deleted.
    assert (out / "_manifests" / "index.parquet").exists() and not list((out / "_manifests").glob("part-*.json"))


def test_split_is_a_pure_function_of_key(reference):
    from ray_pipelines.splits import train_val_split

    out, _ = reference
    for (key, _version), (_, _, split) in rows_by_key(out).items():
        assert split == train_val_split(3, key, 0.2)


def test_same_bytes_with_two_actors_and_other_block_sizes(reference, clips, tmp_path, ray_local):
    ref_out, _ = reference
    out = tmp_path / "two"
    run_job(AugmentJob(config(clips, out, actors=2, batch_size=3, inputs_per_block=1)), progress=False)
    assert rows_by_key(out) == rows_by_key(ref_out)


class WriteTasksAugmentJob(AugmentJob):
    """The augment job with its shards written by Ray write tasks (the GPU-cluster path)
    instead of inside the CPU actors."""

    def make_sink(self, fingerprint):
        sink = super().make_sink(fingerprint)
        sink.layout_uses_rank = True  # the runner keeps such sinks out of the actors
        return sink


def test_same_files_whether_actors_or_write_tasks_write_them(reference, clips, tmp_path, ray_local):
    ref_out, _ = reference
    out = tmp_path / "write-tasks"
    monitor = ArrivalTimes("augment")
    result = run_job(WriteTasksAugmentJob(config(clips, out, actors=1)), progress=False, monitor=monitor)
    files = sorted(p.relative_to(out) for p in out.glob("*/part-*.parquet"))
    assert files == sorted(p.relative_to(ref_out) for p in ref_out.glob("*/part-*.parquet"))
    assert all((out / f).read_bytes() == (ref_out / f).read_bytes() for f in files)
    # Either way the driver gets one report per block with the same keys.
    assert sum(w["rows"] for w in result.writes) == result.run_rows == result.counts["rows_written"]
    assert sum(w["inputs"] for w in result.writes) == result.counts["processed_this_run"]
    assert all(
        set(w) == {"inputs", "rows", "error_rows", "files", "bytes", "fenced", "finished_at", "writer"}
        for w in result.writes
    )
    # The reports stream to the driver as the write tasks finish, not all at the end.
    assert len(monitor.arrived) == len(result.writes) >= 3
    assert monitor.arrived[0] < max(w["finished_at"] for w in result.writes)
    assert (monitor.inputs_done, monitor.rows) == (result.counts["processed_this_run"], result.run_rows)


def test_actor_written_reports_stream_to_the_driver_too(clips, tmp_path, ray_local):
    monitor = ArrivalTimes("augment")
    result = run_job(
        AugmentJob(config(clips, tmp_path / "out", actors=1, inputs_per_block=1, limit=4)), monitor=monitor
    )
    assert len(monitor.arrived) == len(result.writes) == 4
    assert monitor.arrived[0] < max(w["finished_at"] for w in result.writes)
    assert monitor.inputs_done == monitor.to_do == 4 and monitor.rows == result.run_rows == 8


def test_the_timeline_records_the_drivers_milestones_in_order(clips, tmp_path, ray_local, monkeypatch):
    timeline = tmp_path / "timeline.txt"
    monkeypatch.setenv("RAY_PIPELINES_TIMELINE", str(timeline))
    run_job(AugmentJob(config(clips, tmp_path / "out", actors=1, inputs_per_block=1, limit=2)))
    lines = [line.split(" ", 2) for line in timeline.read_text().splitlines()]
    driver = [name for _, pid, name in lines if int(pid) == os.getpid()]
    milestones = ["prepared", "listed", "resume checked", "plan built", "first block written", "run done", "committed"]
    assert [name for name in driver if name in milestones] == milestones
    times = [float(t) for t, pid, _ in lines if int(pid) == os.getpid()]
    assert times == sorted(times) and len(times) == len(driver)  # appended as they happened
    monkeypatch.delenv("RAY_PIPELINES_TIMELINE")
    timeline.unlink()
    run_job(AugmentJob(config(clips, tmp_path / "out", actors=1, inputs_per_block=1, limit=2)))
    assert not timeline.exists()  # off unless asked for


class ArrivalTimes(ProgressDisplay):
    """Records when each write report reached the driver."""

    def __init__(self, job: str):
        super().__init__(job)
        self.arrived: list[float] = []

    def show_update(self) -> None:
        self.arrived.append(time.time())


def test_rerun_skips_everything_and_refuses_another_config(reference, clips, tmp_path, ray_local):
    ref_out, manifest = reference
    out = tmp_path / "rerun"
    run_job(AugmentJob(config(clips, out, limit=3)), progress=False)
    first = rows_by_key(out)
    assert len({k for k, _ in first}) == 3
    # Same config, no limit: only the remaining inputs are processed, earlier rows untouched.
    result = run_job(AugmentJob(config(clips, out)), progress=False)
    assert result.counts["skipped_already_committed"] == 3
    assert result.counts["processed_this_run"] == manifest["counts"]["listed"] - 3
    assert rows_by_key(out) == rows_by_key(ref_out)
    # Once more: nothing to do, Ray not even needed.
    again = run_job(AugmentJob(config(clips, out)), progress=False)
    assert again.counts["processed_this_run"] == 0 and again.run_rows == 0
    # Another config fingerprint is refused, naming what changed...
    with pytest.raises(OutputConflict, match="n_mels"):
        run_job(AugmentJob(config(clips, out, n_mels=16)), progress=False)
    # ...unless the user asks to overwrite.
    replaced = run_job(AugmentJob(config(clips, out, n_mels=16, limit=1)), overwrite=True, progress=False)
    assert replaced.counts["rows_written"] == 2 and replaced.manifest["schema"]["view1"]["shape"] == [1, 16, 63]


def test_bad_inputs_become_error_rows_and_the_rest_completes(tmp_path, ray_local):
    src = tmp_path / "in"
    write_audio(src / "good_a.wav", tone(1.0))
    write_audio(src / "good_b.mp3", tone(1.2, freq=300.0))
    (src / "zero.wav").write_bytes(b"")
    flac = encoded_bytes(tone(2.0), "flac")
    (src / "truncated.flac").write_bytes(flac[: len(flac) // 3])
    (src / "text.wav").write_text("definitely not audio\n" * 30)
    nan_audio = tone(1.0)
    nan_audio[::500] = np.nan
    sf.write(src / "nan.wav", nan_audio, 44100, subtype="FLOAT")
    write_audio(src / "too_short.wav", tone(0.01))
    write_tar(src / "shard.tar", {"ok.flac": encoded_bytes(tone(1.0)), "../evil.wav": encoded_bytes(tone(1.0), "wav")})
    out = tmp_path / "out"
    result = run_job(AugmentJob(config(src, out)), progress=False)

    errors = {json.loads(line)["key"]: json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()}
    assert set(errors) == {
        "zero.wav",
        "truncated.flac",
        "text.wav",
        "nan.wav",
        "too_short.wav",
        "shard.tar/../evil.wav",
    }
    assert errors["zero.wav"]["reason"] == "empty file (0 bytes)"
    assert errors["truncated.flac"]["reason"].startswith(("truncated", "undecodable"))
    assert errors["text.wav"]["reason"].startswith("undecodable")
    assert errors["nan.wav"]["reason"].startswith("non-finite samples")
    assert errors["too_short.wav"]["reason"].startswith("too short")
    assert "escapes its folder" in errors["shard.tar/../evil.wav"]["reason"]
    assert not any(e["retry"] for e in errors.values())
    written = {key for key, _ in rows_by_key(out)}
    assert written == {"good_a.wav", "good_b.mp3", "shard.tar/ok.flac"}
    assert result.counts["listed"] == 9 and result.counts["errors"] == 6 and result.counts["lost"] == 0
    # Failed inputs are final: a rerun does not retry them.
    assert run_job(AugmentJob(config(src, out)), progress=False).counts["processed_this_run"] == 0


def test_resume_after_a_killed_run_equals_an_uninterrupted_run(reference, clips, tmp_path, ray_local):
    ref_out, _ = reference
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "jobs.augment",
        "--no-progress",
        "--quiet",
        *[
            a
            for k, v in {**SMALL, "actors": 1, "inputs_per_block": 1, "batch_size": 1}.items()
            for a in ("--set", f"{k}={v}")
        ],
        "--set",
        f"input={clips}",
        "--set",
        f"output={out}",
    ]
    run_killed_at_first_block(args, tmp_path / "killed-run.log")
    committed = len(list((out / "_manifests").glob("part-*.json")))
    assert committed >= 1 and not (out / "_SUCCESS").exists(), "the run should have been killed mid-way"
    # A half-written file from the killed attempt, named like a data file but in no manifest.
    orphan = out / "train" / "part-deadbeef.parquet"
    orphan.write_bytes(b"PAR1 partial")

    result = run_job(AugmentJob(config(clips, out)), progress=False)
    assert result.counts["skipped_already_committed"] > 0
    assert result.counts["duplicates"] == 0 and result.counts["orphans_removed"] >= 1
    assert not orphan.exists()
    assert rows_by_key(out) == rows_by_key(ref_out)


def test_reader_yields_two_views_and_changes_version_per_epoch(reference):
    import torch
    from torch.utils.data import DataLoader

    from ray_pipelines.readers import ContrastiveViews

    out, manifest = reference
    dataset = ContrastiveViews(str(out), "train")
    assert len(dataset) == manifest["splits"]["train"] // 2
    view1, view2 = dataset[0]
    assert view1.shape == (1, 32, 63) and view1.dtype == torch.float32 and not torch.equal(view1, view2)
    epoch0 = [dataset.version_for(i) for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset.version_for(i) for i in range(len(dataset))]
    assert all(a != b for a, b in zip(epoch0, epoch1))
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert sum(b[0].shape[0] for b in batches) == len(dataset)
