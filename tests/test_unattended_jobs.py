"""Inputs that change and go away, for the teacher, encode (its .npy layout), features and score
jobs: after a changed, a deleted (pruned) and a new input, the output equals a fresh run on the final
inputs, row for row and byte for byte (tests/test_unattended.py does augment, on disk and on S3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.engine.summary import format_summary
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob
from ray_pipelines.jobs.score import ScoreConfig, ScoreJob
from ray_pipelines.jobs.teacher import TeacherConfig, TeacherJob
from tests.audio_helpers import encoded_bytes, tone, write_tar
from tests.output_helpers import Store, assert_no_leftovers, committed_rows

SETTINGS = {
    "teacher": (
        TeacherJob,
        TeacherConfig,
        {"teachers": [{"kind": "loudness"}], "duration": 0.5, "max_windows": 2, "val_fraction": 0.0},
    ),
    "encode": (
        EncodeJob,
        EncodeConfig,
        {
            "model": {"kind": "builtin", "builtin": {"hidden": 4, "latent_dim": 4, "strides": [4, 4]}},
            "sample_size": 4096,
            "windows": "all",
        },
    ),
    "features": (
        FeaturesJob,
        FeaturesConfig,
        {"splits": {"train": 1.0}, "min_per_label": 1, "snippets_per_song": 2, "snippet_seconds": 0.3}
        | {"max_length": 16, "n_mels": 16},
    ),
    "score": (
        ScoreJob,
        ScoreConfig,
        {"duration": 0.5, "n_mels": 16, "n_fft": 512, "hop_length": 256, "batch_size": 4}
        | {"scorers": ["reconstruction"], "model": {"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2}},
    ),
}
KEY_AND_INDEX = {"teacher": ("key", "window"), "features": ("path", "snippet"), "score": ("key", "item")}


def label(i: int) -> str:
    return "a" if i < 3 else "b"


def clip(i: int, seconds: float = 0.6) -> bytes:
    return encoded_bytes(tone(seconds, 22050, freq=250.0 + 60 * i, seed=i), "flac", 22050)


def job(name: str, store: Store, output: str):
    job_cls, config_cls, settings = SETTINGS[name]
    config = {"input": store.url("in"), "output": store.url(output), "storage_options": store.options}
    config |= {"actors": 1, "inputs_per_block": 2, "on_delete": "prune", "seed": 4, **settings}
    return job_cls(validate_config(config_cls, config))


def contents(name: str, store: Store, output: str) -> dict:
    """Every committed row (or .npy sample with its .json) of an output, as a plain reader sees it."""
    if name != "encode":
        return committed_rows(store, output, *KEY_AND_INDEX[name])
    listed = store.fs.cat_file(store.path(f"{output}/filelist.txt")).decode().splitlines()
    on_disk = [p for p in store.files(output) if p.split("/")[0].isdigit()]
    assert sorted(on_disk) == sorted([*listed, *(p[:-4] + ".json" for p in listed)])  # nothing else left
    samples = {}
    for path in listed:
        metadata = json.loads(store.fs.cat_file(store.path(f"{output}/{path[:-4]}.json")))
        latents = store.fs.cat_file(store.path(f"{output}/{path}"))
        samples[(metadata["key"], metadata["window"])] = (latents, json.dumps(metadata, sort_keys=True))
    return samples


@pytest.mark.parametrize("name", ["teacher", "encode", "features", "score"])
def test_changed_deleted_and_new_inputs_end_equal_to_a_fresh_run(name, tmp_path, ray_local):
    store = Store.local(tmp_path)
    for i in range(6):
        store.write(f"in/{label(i)}/clip{i}.flac", clip(i))
    assert run_job(job(name, store, "out"), progress=False).complete

    store.write("in/a/clip1.flac", clip(11, seconds=0.9))  # re-uploaded with new content
    store.delete("in/b/clip4.flac")  # withdrawn
    store.write("in/b/clip6.flac", clip(6))  # new
    second = run_job(job(name, store, "out"), progress=False)
    inputs = second.manifest["inputs"]
    assert (inputs["new"], inputs["changed"], inputs["deleted"], inputs["unchanged"]) == (1, 1, 1, 4)
    assert second.complete and second.counts["processed_this_run"] == 2 and second.counts["duplicates"] == 0

    assert run_job(job(name, store, "fresh"), progress=False).complete
    final, fresh = contents(name, store, "out"), contents(name, store, "fresh")
    assert {key for key, _ in final} == {f"{label(i)}/clip{i}.flac" for i in (0, 1, 2, 3, 5, 6)}
    assert final == fresh
    if name != "encode":
        assert_no_leftovers(store, "out")
    if name == "features":  # the class balance is counted from the committed rows
        balance = store.read_json("out/balance.json")
        assert balance == store.read_json("fresh/balance.json") | {"library": balance["library"]}
    if name == "score":
        assert store.fs.cat_file(store.path("out/scores.csv")) == store.fs.cat_file(store.path("fresh/scores.csv"))
    assert np.all([store.exists(f"{output}/_SUCCESS") for output in ("out", "fresh")])


def test_a_tar_shard_written_again_replaces_what_its_old_version_gave(tmp_path, ray_local):
    """A shard listed half-written was an input of its own, an error row ("unreadable tar shard"); written
    again whole, that row stayed, reported as a deleted input kept (on_delete: keep), and its key stayed
    among the errors (and a score job's ignored.txt) for good. The shard is there, with new content: what
    its old version gave and its new one does not is a changed input's, and leaves the output."""
    store = Store.local(tmp_path)
    whole = write_tar(tmp_path / "whole.tar", {f"clip{i}.flac": clip(i, seconds=1.5) for i in range(2)}).read_bytes()
    store.write("in/shard.tar", whole[: len(whole) * 3 // 4])  # the first member whole, the second cut

    def teacher(output: str) -> TeacherJob:
        config = {"input": store.url("in"), "output": store.url(output), "actors": 1, **SETTINGS["teacher"][2]}
        return TeacherJob(validate_config(TeacherConfig, config))  # on_delete: keep, the default

    first = run_job(teacher("out"), progress=False)
    errors = {e["key"]: e["reason"] for e in store.read_jsonl("out/errors.jsonl")}
    assert first.complete and sorted(errors) == ["shard.tar", "shard.tar/clip1.flac"]  # its header read, not its data
    assert errors["shard.tar"].startswith("unreadable tar shard")
    store.write("in/shard.tar", whole)
    second = run_job(teacher("out"), progress=False)
    inputs = second.manifest["inputs"]
    assert (inputs["new"], inputs["changed"], inputs["deleted"], inputs["kept_stale"]) == (0, 3, 0, {})
    assert inputs["rewritten"] == 1 and "  inputs listed       2" in format_summary("teacher", second).splitlines()
    assert second.complete and store.read_jsonl("out/errors.jsonl") == []
    assert run_job(teacher("fresh"), progress=False).complete
    assert contents("teacher", store, "out") == contents("teacher", store, "fresh")
    assert {key for key, _ in contents("teacher", store, "out")} == {"shard.tar/clip0.flac", "shard.tar/clip1.flac"}


def test_an_input_missing_then_deleted_leaves_no_retry_row_in_a_complete_output(tmp_path, ray_local):
    """A broken link is a retryable error ("missing: broken symlink"), so the run is incomplete; once the
    link is gone the next run completed with its "retry" row still in errors.jsonl, for good."""
    store = Store.local(tmp_path)
    store.write("in/a/clip0.flac", clip(0))
    (tmp_path / "in" / "a" / "link.flac").symlink_to(tmp_path / "nowhere.flac")
    config = {"input": store.url("in"), "output": store.url("out"), "actors": 1, **SETTINGS["teacher"][2]}
    first = run_job(TeacherJob(validate_config(TeacherConfig, config)), progress=False)
    errors = store.read_jsonl("out/errors.jsonl")
    assert not first.complete and [(e["key"], e["retry"]) for e in errors] == [("a/link.flac", True)]
    (tmp_path / "in" / "a" / "link.flac").unlink()
    second = run_job(TeacherJob(validate_config(TeacherConfig, config)), progress=False)
    assert second.complete and store.read_jsonl("out/errors.jsonl") == [] and store.exists("out/_SUCCESS")
    assert (second.manifest["inputs"]["deleted"], second.manifest["inputs"]["kept_stale"]) == (1, {})
