"""Retryable errors (missing, unreadable, lost) are retried by the next run and then leave errors.jsonl."""

from __future__ import annotations

import json

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from tests.audio_helpers import tone, write_audio


def run_control_keys() -> set[bytes]:
    """What runs' controls hold in the GCS (each pool actor registers there while a run goes; a killed
    driver's stay)."""
    from ray.experimental import internal_kv

    from ray_pipelines.engine.control import KV_NAMESPACE

    return set(internal_kv._internal_kv_list("run-control/", namespace=KV_NAMESPACE))


def test_a_missing_input_is_retried_and_its_error_cleared_once_it_appears(tmp_path, ray_local, monkeypatch):
    from ray_pipelines.engine.control import RunControl

    held_at_close = []  # each run's keys as its control is closed
    close = RunControl.close
    monkeypatch.setattr(RunControl, "close", lambda self: (held_at_close.append(run_control_keys()), close(self)))
    src = tmp_path / "in"
    write_audio(src / "here.wav", tone(1.0))
    listing = src / "inputs.txt"
    listing.write_text("here.wav\nlater.wav\n")
    cfg = validate_config(
        AugmentConfig,
        {
            "input": str(listing),
            "output": str(tmp_path / "out"),
            "num_versions": 1,
            "duration": 0.5,
            "n_mels": 16,
            "sample_rate": 16000,
            "n_fft": 512,
            "hop_length": 256,
        },
    )
    controls_before = run_control_keys()
    first = run_job(AugmentJob(cfg), progress=False)
    # Each run's control is removed with its blocks: a session running job after job (a notebook, the
    # test suite) kept a worker process for every run before, when it was an actor.
    assert run_control_keys() == controls_before
    (registered,) = [keys - controls_before for keys in held_at_close]  # its pool actor was there
    assert registered and all(b"/actors/" in key for key in registered)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [(e["key"], e["retry"]) for e in errors] == [("later.wav", True)]
    assert errors[0]["reason"].startswith("missing")
    assert first.counts["rows_written"] == 1

    write_audio(src / "later.wav", tone(1.0, freq=600.0))
    second = run_job(AugmentJob(cfg), progress=False)
    assert run_control_keys() == controls_before
    assert second.counts["skipped_already_committed"] == 1 and second.counts["processed_this_run"] == 1
    assert second.counts["rows_written"] == 2 and second.counts["errors"] == 0
    assert (tmp_path / "out" / "errors.jsonl").read_text() == ""
