"""keep_list / ignore_list: the engine's input filter, here on the augment job (one Ray run)."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest

import ray_pipelines.jobs.augment as augment_job
from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job, select_inputs
from ray_pipelines.engine.summary import format_summary
from tests.audio_helpers import tone, write_audio
from tests.conftest import Lines

TINY = {
    "num_versions": 1,
    "duration": 0.5,
    "n_mels": 16,
    "num_waveform_augs": 1,
    "num_spectrogram_augs": 1,
    "actors": 1,
}


def test_keep_list_on_the_augment_job_processes_only_the_kept_keys(tmp_path, ray_local):
    keys = [f"{cls}/{cls}_{i}.wav" for cls in ("good", "bad") for i in range(3)]
    for i, key in enumerate(keys):
        write_audio(tmp_path / "audio" / key, tone(0.6, freq=200.0 + 50 * i, seed=i))
    # a kept.txt as the score job writes it (one key per line), plus a comment, a blank line and a key
    # that is not in the input at all
    (tmp_path / "kept.txt").write_text(
        "# kept by the score job\ngood/good_0.wav\n\nbad/bad_2.wav\ngood/good_2.wav\nnot/there.wav\n"
    )
    (tmp_path / "ignored.txt").write_text("good/good_2.wav\n")
    config = validate_config(
        augment_job.AugmentConfig,
        {
            "input": str(tmp_path / "audio"),
            "output": str(tmp_path / "out"),
            "keep_list": str(tmp_path / "kept.txt"),
            "ignore_list": str(tmp_path / "ignored.txt"),
            **TINY,
        },
    )
    job = augment_job.JOB(config)
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.runner")
    logger.addHandler(said)
    try:
        assert select_inputs(job)["key"].to_pylist() == ["bad/bad_2.wav", "good/good_0.wav"]
        result = run_job(job, progress=False)
        again = run_job(job, progress=False)  # nothing to do: the inputs left out are not new on every run
    finally:
        logger.removeHandler(said)
    # manifest.json's counts: the listing and what the keep list selected (listed held the selected before)
    assert (result.counts["listed"], result.counts["selected"], result.counts["rows_written"]) == (6, 2, 2)
    inputs = result.manifest["inputs"]
    assert (inputs["new"], inputs["left_out"], inputs["unchanged"]) == (2, 4, 0)
    inputs = again.manifest["inputs"]
    assert (inputs["new"], inputs["left_out"], inputs["unchanged"], again.counts["processed_this_run"]) == (0, 4, 2, 0)
    summary = format_summary("augment", again)
    assert "inputs listed       6 (2 selected)" in summary
    assert "0 new, 0 changed, 0 deleted, 2 unchanged, 4 left out (not selected, never committed or changed)" in summary
    # the key that names no input (a typo, or a path where a key belongs) is said, with a key that does
    unmatched = f"keep_list {tmp_path / 'kept.txt'}: 1 of its 4 keys name no listed input ('not/there.wav')"
    assert said.lines.count(f"{unmatched}; a listed input's key: 'bad/bad_0.wav'") == 3  # once per listing
    assert written_keys(tmp_path / "out") == ["bad/bad_2.wav", "good/good_0.wav"]

    # A committed input uploaded again while the lists leave it out keeps its rows until a run takes it
    # (they were taken out as stale and the input not processed: it had no rows at all).
    write_audio(tmp_path / "audio" / "bad/bad_2.wav", tone(0.7, freq=900.0, seed=9))
    (tmp_path / "ignored.txt").write_text("good/good_2.wav\nbad/bad_2.wav\n")
    left = run_job(job, progress=False)
    assert (left.manifest["inputs"]["changed"], left.manifest["inputs"]["left_out"]) == (0, 5)
    assert written_keys(tmp_path / "out") == ["bad/bad_2.wav", "good/good_0.wav"]
    (tmp_path / "ignored.txt").write_text("good/good_2.wav\n")
    taken = run_job(job, progress=False)
    assert (taken.manifest["inputs"]["changed"], taken.counts["processed_this_run"]) == (1, 1)
    assert written_keys(tmp_path / "out") == ["bad/bad_2.wav", "good/good_0.wav"] and taken.complete
    # the lists are runtime settings: a run without them resumes the same output with the rest
    unfiltered = config.model_copy(update={"keep_list": None, "ignore_list": None})
    assert unfiltered.fingerprint() == config.fingerprint()


def written_keys(output) -> list[str]:
    return sorted(
        k
        for path in output.rglob("part-*.parquet")
        for k in pq.read_table(path, columns=["key"]).column("key").to_pylist()
    )


def test_an_ignore_list_that_names_no_listed_input_is_said(tmp_path):
    """An ignore list of paths or URLs where keys belong skipped nothing, without a word (a keep list's
    unmatched keys were said)."""
    from ray_pipelines.engine.runner import apply_key_lists
    from ray_pipelines.sources import InputItem

    items = [InputItem(key=f"good/good_{i}.wav", uri=f"/in/good/good_{i}.wav", size=1) for i in range(3)]
    (tmp_path / "ignored.txt").write_text("/in/good/good_0.wav\n/in/good/good_1.wav\n")
    config = validate_config(
        augment_job.AugmentConfig, {"input": "in", "output": "out", "ignore_list": str(tmp_path / "ignored.txt")}
    )
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.runner")
    logger.addHandler(said)
    try:
        assert apply_key_lists(items, config) == items
        (tmp_path / "ignored.txt").write_text("good/good_0.wav\ngone/deleted.wav\n")  # one key matches: fine
        assert [i.key for i in apply_key_lists(items, config)] == ["good/good_1.wav", "good/good_2.wav"]
        # with a keep list that already left its key out: it names a listed input all the same
        (tmp_path / "kept.txt").write_text("good/good_1.wav\n")
        kept = config.model_copy(update={"keep_list": str(tmp_path / "kept.txt")})
        assert [i.key for i in apply_key_lists(items, kept)] == ["good/good_1.wav"]
    finally:
        logger.removeHandler(said)
    assert said.lines == [
        f"ignore_list {tmp_path / 'ignored.txt'}: 2 of its 2 keys name no listed input ('/in/good/good_0.wav', "
        "'/in/good/good_1.wav'); a listed input's key: 'good/good_0.wav'"
    ]


def test_a_keep_list_that_names_no_listed_input_fails_the_run_unless_allow_empty(tmp_path):
    """Keys of another root (the input given as clips/train, the keys train/...): a warning, then a run of no
    input that exited 0 with _SUCCESS and no rows, which a scheduler takes for a good night."""
    from ray_pipelines.engine.runner import apply_key_lists
    from ray_pipelines.sources import InputItem, SourceError

    items = [InputItem(key=f"good_{i}.wav", uri=f"/in/train/good_{i}.wav", size=1) for i in range(3)]
    (tmp_path / "kept.txt").write_text("train/good_0.wav\ntrain/good_1.wav\n")
    settings = {"input": "in/train", "output": "out", "keep_list": str(tmp_path / "kept.txt")}
    config = validate_config(augment_job.AugmentConfig, settings)
    with pytest.raises(SourceError) as said:
        apply_key_lists(items, config)
    assert str(said.value) == (
        f"keep_list {tmp_path / 'kept.txt'}: none of its 2 keys names a listed input ('train/good_0.wav', "
        "'train/good_1.wav'); a listed input's key: 'good_0.wav' (set allow_empty: true to allow it)"
    )
    allowed = validate_config(augment_job.AugmentConfig, {**settings, "allow_empty": True})
    assert apply_key_lists(items, allowed) == []
    (tmp_path / "kept.txt").write_text("")  # an empty keep list (a filter that kept nothing) takes nothing
    assert apply_key_lists(items, config) == []
