"""The teacher job on synthetic input, on a real local Ray with the real PESTO and CREPE weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import table_to_numpy
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.teacher import JOB, TeacherConfig

EDGE_FRAMES = 3  # frames whose analysis window reaches past the clip (30 ms each side)
VOICED = 0.5  # confidence / periodicity above which a frame counts as voiced


def run(tmp_path: Path, name: str, seed: int, synth: dict, teachers: list[dict]):
    config = validate_config(
        TeacherConfig,
        {
            "input": "synth://",
            "output": str(tmp_path / name),
            "seed": seed,
            "synth": synth,
            "teachers": teachers,
            "actors": 1,
            "inputs_per_block": 2,
        },
    )
    return run_job(JOB(config), progress=False)


def shard_digests(output: str) -> dict[str, str]:
    root = Path(output)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("*/part-*.parquet"))
    }


def read_split(output: str, split: str) -> dict[str, np.ndarray]:
    """A whole (tiny) split with plain pyarrow, sorted by key."""
    table = pq.read_table(sorted(str(p) for p in Path(output).glob(f"{split}/*.parquet"))).sort_by("key")
    return table_to_numpy(table)


@pytest.fixture(scope="module")
def sine_caches(ray_local, tmp_path_factory):
    """The same validation set of sines, twice (different seeds), through PESTO, CREPE tiny and loudness."""
    tmp = tmp_path_factory.mktemp("teacher-val")
    synth = {
        "num_samples": 3,
        "validation": True,
        "families": ["sine"],
        "f0_range": [200.0, 800.0],
        "db_range": [-20.0, -10.0],
    }
    teachers = [{"kind": "pesto"}, {"kind": "torchcrepe", "capacity": "tiny"}, {"kind": "loudness"}]
    return run(tmp, "a", 0, synth, teachers), run(tmp, "b", 7, synth, teachers)


@pytest.mark.parametrize("teacher, voicing", [("pesto", "confidence"), ("crepe_tiny", "periodicity")])
def test_cached_f0_is_within_one_percent_of_the_true_f0(sine_caches, teacher, voicing):
    rows = read_split(sine_caches[0].output, "val")
    assert len(rows["key"]) == 3 and rows["x"].shape == (3, 52920) and rows[f"{teacher}_f0"].shape == (3, 121)
    for true_f0, f0, confidence in zip(rows["f0"], rows[f"{teacher}_f0"], rows[f"{teacher}_{voicing}"]):
        inner = slice(EDGE_FRAMES, -EDGE_FRAMES)
        voiced = confidence[inner] >= VOICED
        assert voiced.mean() > 0.95, f"{teacher} calls a steady sine unvoiced"
        error = np.abs(f0[inner][voiced] / true_f0 - 1)
        assert error.max() < 0.01, f"{teacher} at {true_f0:.1f} Hz: worst frame off by {error.max():.2%}"


def test_loudness_follows_the_drawn_level(sine_caches):
    rows = read_split(sine_caches[0].output, "val")
    loudness = rows["loudness_db"][:, 10:-10].mean(axis=1)
    order = np.argsort(rows["db"])
    assert np.all(np.diff(loudness[order]) > 0)  # louder drawn level -> louder teacher reading


def test_validation_runs_are_byte_identical_and_record_the_teachers(sine_caches):
    first, second = sine_caches
    assert first.counts["rows_written"] == second.counts["rows_written"] == 3
    digests = shard_digests(first.output)
    assert len(digests) == 2 and digests == shard_digests(second.output)  # 3 samples, 2 per block
    manifest = first.manifest
    teachers = {t["name"]: t for t in manifest["fingerprint_extra"]["teachers"]}
    assert set(teachers) == {"pesto", "crepe_tiny", "loudness"}
    assert teachers["pesto"]["version"].startswith("pesto-pitch") and len(teachers["pesto"]["weights_sha256"]) == 64
    assert manifest["schema"]["pesto_f0"] == {"type": "tensor", "dtype": "float32", "shape": [121]}
    metadata = pq.read_schema(next(Path(first.output).glob("val/*.parquet"))).metadata
    assert json.loads(metadata[b"ray_pipelines.teachers"])[0]["name"] == "pesto"
    # Uncompressed PLAIN floats (the readers take them where they lie), a row group of several clips
    # (every clip is read each epoch): the two-clip file is one group.
    shard = max(Path(first.output).glob("val/*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    footer = pq.read_metadata(shard)
    group = footer.row_group(0)
    x = next(group.column(i) for i in range(footer.num_columns) if group.column(i).path_in_schema == "x.list.element")
    assert x.compression == "UNCOMPRESSED" and "BYTE_STREAM_SPLIT" not in x.encodings
    assert footer.num_rows == 2 and footer.num_row_groups == 1


def test_training_set_changes_with_the_seed(ray_local, tmp_path):
    synth = {"num_samples": 3, "f0_range": [100.0, 1000.0]}
    first = run(tmp_path, "s1", 1, synth, [{"kind": "loudness"}])
    second = run(tmp_path, "s2", 2, synth, [{"kind": "loudness"}])
    a, b = read_split(first.output, "train"), read_split(second.output, "train")
    assert list(a["key"]) == list(b["key"]) == [f"synth/train/00000{i}" for i in range(3)]
    assert not np.allclose(a["f0"], b["f0"]) and not np.array_equal(a["x"], b["x"])
    assert set(shard_digests(first.output).values()).isdisjoint(shard_digests(second.output).values())
    # and with one seed a sample is what the generator says it is, whichever block it ran in
    from ray_pipelines.synth import SynthConfig, synth_sample

    audio, params = synth_sample(SynthConfig(**synth), 1, "synth/train/000002", 2, 44100, 52920)
    assert np.array_equal(a["x"][2], audio.astype(np.float32)) and a["family"][2] == params.family
