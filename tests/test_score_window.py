"""The score job's audio window: ``duration`` seconds from ``offset``, for every file (no Ray)."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from ray_pipelines.config import validate_config
from ray_pipelines.jobs.score import ScoreConfig, ScoreJob

RATE = 16000


def score_job(tmp_path, offset: float) -> ScoreJob:
    settings = {"scorers": ["signal"], "split_pattern": None, "class_pattern": None, "sample_rate": RATE}
    return ScoreJob(
        validate_config(
            ScoreConfig,
            {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "offset": offset, "duration": 10.0}
            | settings,
        )
    )


def decoded(job: ScoreJob) -> dict[str, dict]:
    decoder = job.decoder()
    return {item.key: row for item in job.list_inputs() for row in decoder.decode_input(item.to_row())}


def test_a_short_files_window_starts_at_offset_and_a_file_that_ends_before_it_is_an_error_row(tmp_path):
    """``offset`` skips each file's start (an intro). A file shorter than ``offset + duration`` had its window
    moved earlier, into the intro: its scores were the intro's (a full-scale square wave scored as the
    quiet speech after it: peak -0.09 dBFS, 10-20 % clipping)."""
    (tmp_path / "in").mkdir()
    seconds = np.arange(5 * RATE) / RATE
    intro = 0.99 * np.sign(np.sin(2 * np.pi * 100 * seconds[: 2 * RATE]))
    quiet = 0.01 * np.sin(2 * np.pi * 440 * seconds[: 3 * RATE])
    for name, audio in {
        "intro.wav": np.concatenate([intro, quiet]),  # 5 s: 3 s to score after the 2 s intro
        "short.wav": quiet[: int(1.5 * RATE)],  # ends before the offset
        "edge.wav": np.concatenate([intro, quiet[: int(0.03 * RATE)]]),  # 30 ms after it: below min_duration
    }.items():
        sf.write(tmp_path / "in" / name, audio.astype(np.float32), RATE)

    rows = decoded(score_job(tmp_path, offset=2.0))
    window = rows["intro.wav"]
    assert window["error"] == "" and window["start_seconds"] == 2.0 and window["valid"] == 3 * RATE
    assert np.abs(window["audio"]).max() < 0.011  # the quiet part only, not the intro's 0.99
    assert rows["short.wav"]["error"] == "too short for offset: 1.500 s ends before offset 2 s"
    assert (
        rows["edge.wav"]["error"] == "too short for offset: 2.030 s ends 0.030 s after offset 2 s (min_duration 0.05 s)"
    )

    # offset 0: every file from its start, as before
    rows = decoded(score_job(tmp_path, offset=0.0))
    assert all(row["error"] == "" and row["start_seconds"] == 0.0 for row in rows.values())
    assert np.abs(rows["intro.wav"]["audio"]).max() > 0.98 and rows["short.wav"]["valid"] == int(1.5 * RATE)


def test_outputs_scored_with_an_offset_before_the_window_kept_it_are_not_mixed_with_new_rows(tmp_path):
    """An output scored with ``offset > 0`` by the code that moved short files' windows is refused by the
    fingerprint (their rows differ); outputs with ``offset: 0``, whose windows did not move, keep theirs."""
    (tmp_path / "in").mkdir()
    assert score_job(tmp_path, offset=2.0).fingerprint_extra()["window_from_offset"] is True
    assert "window_from_offset" not in score_job(tmp_path, offset=0.0).fingerprint_extra()
