"""The score job on another job's Parquet shards: the augment job's view1 tensors.

Two Ray job runs: a tiny augment job, then the score job on its output.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest

import ray_pipelines.jobs.augment as augment_job
import ray_pipelines.jobs.score as score_job
from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.runner import run_job
from ray_pipelines.engine.summary import format_summary
from ray_pipelines.sources import SourceError
from tests.audio_helpers import tone, write_audio

TINY_AUGMENT = {
    "num_versions": 2,
    "duration": 0.5,
    "n_mels": 16,
    "num_waveform_augs": 1,
    "num_spectrogram_augs": 1,
    "val_fraction": 0.5,
    "actors": 1,
    "seed": 3,
}
FRAMES = 1 + int(round(0.5 * 22050)) // 512


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("score_shards")
    for cls, freq in (("good", 330.0), ("bad", 990.0)):
        for i in range(2):
            write_audio(root / "audio" / cls / f"{cls}_{i}.flac", tone(0.8, freq=freq * (1 + i), seed=i))
    config = validate_config(
        augment_job.AugmentConfig, {"input": str(root / "audio"), "output": str(root / "augment"), **TINY_AUGMENT}
    )
    result = run_job(augment_job.JOB(config), progress=False)
    assert result.counts["rows_written"] == 8
    return root


def augment_views(output) -> dict[tuple[str, int], tuple[str, np.ndarray]]:
    views = {}
    for path in sorted(output.rglob("part-*.parquet")):
        table = pq.read_table(path)
        view1 = column_to_numpy(table.column("view1"))
        for key, version, mel in zip(table.column("key").to_pylist(), table.column("version").to_pylist(), view1):
            views[key, version] = (path.parent.name, mel)
    return views


def test_score_job_reads_the_augment_jobs_shards(augmented):
    root = augmented
    settings = {
        "input": str(root / "augment"),
        "output": str(root / "scores"),
        "source": "shards",
        "tensor_column": "view1",
        "split_pattern": None,
        "class_pattern": r"^([^/]+)/",
        "n_mels": 16,
        "frames": FRAMES,
        "normalize": {"mean": -40.0, "std": 20.0},
        "actors": 1,
        "batch_size": 4,
        "model": {"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2},
        "filter": {"train_split": "train"},
    }
    config = validate_config(score_job.ScoreConfig, settings)
    result = run_job(score_job.JOB(config), progress=False)
    assert result.counts["listed"] == 4 and result.counts["rows_written"] == 8 and result.counts["errors"] == 0

    views = augment_views(root / "augment")
    rows = list(csv.DictReader(io.StringIO((root / "scores/scores.csv").read_text())))
    assert sorted((r["filename"], int(r["item"])) for r in rows) == sorted(views)  # every (key, version)
    for row in rows:
        split, mel = views[row["filename"], int(row["item"])]
        assert row["split"] == split  # the shard's split
        assert row["class"] == row["filename"].split("/")[0]
        normalised = (mel.astype(np.float32) + 40.0) / 20.0
        assert float(row["signal_energy"]) == pytest.approx(np.square(normalised.astype(np.float64)).mean(), rel=1e-6)
    sources = {
        s
        for path in (root / "scores").rglob("part-*.parquet")
        for s in pq.read_table(path, columns=["source"]).column("source").to_pylist()
    }
    assert sources == {str(p) for p in (root / "audio").rglob("*.flac")}  # the augment rows' own source
    kept = (root / "scores/kept.txt").read_text().split()
    ignored = (root / "scores/ignored.txt").read_text().split()
    assert sorted(kept + ignored) == sorted({k for k, _ in views})  # one line per input key, not per version

    # a column the shards do not have is refused before any work
    wrong = config.model_copy(update={"tensor_column": "view3", "output": str(root / "wrong")})
    with pytest.raises(Exception, match="tensor_column 'view3' is not in"):
        run_job(score_job.JOB(wrong), progress=False)

    # Every input an error row (views of another shape): complete, and the lists say so. The filter found
    # no score columns in a table of no rows and stopped the job after its commit, with no key lists.
    rules = {"train_split": "train", "reconstruction_loss": {"mode": "percentile"}, "signal_energy": {"mode": "mean"}}
    changes = {"n_mels": 32, "output": str(root / "mismatched"), "filter": rules}
    mismatched = validate_config(score_job.ScoreConfig, {**settings, **changes})
    result = run_job(score_job.JOB(mismatched), progress=False)
    assert result.complete and result.counts["rows_written"] == 0
    assert (result.counts["errors"], result.counts["error_rows"]) == (4, 8)  # every view of the 4 inputs
    assert result.extra["kept"] == "0 inputs (4 ignored, 4 of them errors): kept.txt"
    assert (root / "mismatched/kept.txt").read_text() == ""
    assert sorted((root / "mismatched/ignored.txt").read_text().split()) == sorted({k for k, _ in views})
    header = (root / "mismatched/scores.csv").read_text()
    assert header == "filename,split,class,group,reconstruction_loss,signal_energy,item\n"
    assert "summaries" not in format_summary("score", result)  # none to name, and no empty line for them


def test_the_features_jobs_shards_are_listed_by_their_path_column(tmp_path):
    """The features job keys its rows by ``path`` (the layout HF's audio classification datasets have), not
    ``key``: listing them stopped the score job with ``KeyError: 'Field "key" does not exist in schema'``."""
    import json

    from bench.readers import write_output
    from ray_pipelines.scoring.inputs import list_shard_inputs

    songs = np.array(["rock/a.flac", "rock/a.flac", "jazz/b.flac"], dtype=object)
    rows = {
        "key": songs,
        "path": songs,
        "snippet": np.array([0, 1, 0]),
        "input_values": np.ones((3, 8, 4), dtype=np.float32),
        "label": np.array([1, 1, 0]),
        "split": np.array(["train", "train", "test"], dtype=object),
    }
    write_output(
        tmp_path / "features", "features", rows, index_column="snippet",
        output_columns=["input_values", "label", "path", "snippet"], key_column="path",
    )  # fmt: skip
    items, splits = list_shard_inputs(str(tmp_path / "features"), "input_values", None, None, None)
    assert [item.key for item in items] == ["jazz/b.flac", "rock/a.flac"]
    assert splits == {"jazz/b.flac": "test", "rock/a.flac": "train"}
    assert [loc[3] for loc in json.loads(items[1].extra["locations"])] == [0, 1]  # its snippets, in order

    rows = {"key": songs, "index": np.arange(3), "x": np.ones((3, 4), dtype=np.float32)}
    write_output(tmp_path / "unkeyed", "rows", rows, index_column="index", output_columns=["index", "x"])
    with pytest.raises(SourceError, match=r"has no key column \(key or path; columns: index, x\)"):
        list_shard_inputs(str(tmp_path / "unkeyed"), "x", None, None, None)
