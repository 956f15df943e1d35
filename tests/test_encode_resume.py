"""Exactly once with a file per sample: a killed run resumes to the same bytes, without duplicates."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.encoders.sat_sink import npy_bytes, sample_id
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.stages.encode import EncodeStage
from tests.audio_helpers import SHARED_AUDIO
from tests.killed_run import run_killed_at_first_block

SETTINGS = {"sample_size": 32768, "windows": "all", "seed": 11, "actors": 1}
CLIPS = [
    "ambient/ambi_choir.flac",
    "bass/bass_hit_c.flac",
    "bass_drum/bd_boom.flac",
    "electronic/elec_chime.flac",
    "loop/loop_amen.flac",
]


def by_id(out: Path) -> dict[str, bytes]:
    """Sample id -> .npy bytes, from filelist.txt; checks the files on disk are exactly those listed."""
    listed = (out / "filelist.txt").read_text().splitlines()
    assert sorted(str(p.relative_to(out)) for p in out.glob("[0-9]*/*")) == sorted(
        [*listed, *(p[:-4] + ".json" for p in listed)]
    )
    ids = [Path(p).stem for p in listed]
    assert len(ids) == len(set(ids)), "duplicate sample ids"
    return {Path(p).stem: (out / p).read_bytes() for p in listed}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    if not (SHARED_AUDIO / "sonic-pi").exists():
        pytest.skip("real recordings not found")
    root = tmp_path_factory.mktemp("resume-clips")
    for rel in CLIPS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((SHARED_AUDIO / "sonic-pi" / rel).read_bytes())
    return root


def uninterrupted(job: EncodeJob) -> dict[str, bytes]:
    """Sample id -> .npy bytes of every window, decoded and encoded here in one go (what an
    uninterrupted run writes: test_encode_job checks a run against the same computation)."""
    rows = [item.to_row() for item in job.list_inputs()]
    (decoded,) = job.decoder()({name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]})
    out = EncodeStage(**job.stage_kwargs())(decoded)
    assert (out["error"] == "").all()
    return {sample_id(k, w): npy_bytes(z) for k, w, z in zip(out["key"], out["window"], out["latents"])}


def test_resume_after_a_killed_run_gives_the_uninterrupted_bytes(clips, tmp_path, ray_local):
    out = tmp_path / "killed"
    job = EncodeJob(validate_config(EncodeConfig, {"input": str(clips), "output": str(out), **SETTINGS}))
    expected = uninterrupted(job)
    assert len(expected) > len(CLIPS)  # some clips span several windows

    args = [
        sys.executable,
        "-m",
        "jobs.encode",
        "--no-progress",
        "--quiet",
        *[a for k, v in {**SETTINGS, "inputs_per_block": 1}.items() for a in ("--set", f"{k}={v}")],
        "--set",
        f"input={clips}",
        "--set",
        f"output={out}",
    ]
    run_killed_at_first_block(args, tmp_path / "killed-run.log")
    assert list((out / "_manifests").glob("part-*.json")) and not (out / "_SUCCESS").exists(), (
        "the run should have been killed mid-way"
    )
    # What a killed writer can leave: a sample in no manifest (in a rank folder the resumed
    # run may not use) and a temp file.
    some_id = next(iter(expected))
    (out / "9").mkdir(exist_ok=True)
    (out / "9" / f"{some_id}.npy").write_bytes(b"\x93NUMPY partial")
    (out / "9" / f"{some_id}.json").write_bytes(b"{")
    (out / "0").mkdir(exist_ok=True)
    (out / "0" / f"{some_id}.npy.tmp-1-2").write_bytes(b"partial")

    resumed = run_job(job, progress=False)
    counts = resumed.counts
    assert counts["skipped_already_committed"] >= 1 and counts["duplicates"] == 0
    assert counts["orphans_removed"] >= 3 and counts["rows_written"] == len(expected)
    assert by_id(out) == expected  # same ids, byte-identical .npy

    # Rerunning the same config: nothing left to do, nothing changes.
    again = run_job(
        EncodeJob(validate_config(EncodeConfig, {"input": str(clips), "output": str(out), **SETTINGS})), progress=False
    )
    assert again.counts["processed_this_run"] == 0 and by_id(out) == expected
