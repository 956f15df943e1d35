"""Engine pieces without Ray: chunked decode-then-stage, batch concatenation, the steady-state rate."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from ray_pipelines.engine.decode import Window, WindowDecoder, concat_batches
from ray_pipelines.engine.runner import DecodeThenStage, JobResult
from tests.audio_helpers import tone, write_audio, write_mp3_without_length


def two_windows(key: str, duration: float) -> list[Window]:
    return [Window(i, 0.25 * i, extra={"window_label": f"{key}#{i}"}) for i in range(2)]


class Energy:
    """A stand-in stage: a number per row, and the decoded columns handed on."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, batch):
        batch["energy"] = self.scale * np.square(batch.pop("audio")).mean(axis=1)
        return batch


def input_rows(paths) -> dict[str, np.ndarray]:
    n = len(paths)
    return {
        "key": np.array([p.name for p in paths], dtype=object),
        "uri": np.array([str(p) for p in paths], dtype=object),
        "size": np.array([p.stat().st_size for p in paths]),
        "member_offset": np.full(n, -1),
        "etag": np.array([""] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
    }


def test_chunked_decode_then_stage_equals_the_whole_block(tmp_path):
    good = [
        write_audio(tmp_path / f"{name}.flac", tone(1.0, 16000, freq=220.0 * (i + 1)), 16000)
        for i, name in enumerate(["a", "b", "e"])
    ]
    bad = [tmp_path / "c.flac", tmp_path / "d.flac"]
    for path in bad:
        path.write_bytes(b"not audio at all")
    paths = sorted(good + bad)  # a, b, c, d, e: chunks of two put c and d (errors only) together
    decoder = WindowDecoder(plan=two_windows, sample_rate=16000, duration=0.5, index_column="window")
    (whole,) = DecodeThenStage(decoder, Energy, {"scale": 2.0})(input_rows(paths))  # a small block: one piece
    (chunked,) = DecodeThenStage(decoder, Energy, {"scale": 2.0}, chunk=2)(input_rows(paths))
    assert set(chunked) == set(whole)
    for name in whole:
        np.testing.assert_array_equal(chunked[name], whole[name])
    assert whole["key"].tolist() == ["a.flac", "a.flac", "b.flac", "b.flac", "c.flac", "d.flac", "e.flac", "e.flac"]
    assert whole["window_label"].tolist()[4:6] == ["", ""]  # error rows: the extra column blank
    assert [e.split(":")[0] for e in whole["error"]] == ["", "", "", "", "undecodable", "undecodable", "", ""]
    assert np.all(whole["energy"][[0, 1, 2, 3, 6, 7]] > 0.1)


class Clips(Energy):
    """A stand-in stage whose output holds the audio too (a teacher's clips); it notes each batch's rows."""

    batches: list[int] = []

    def __call__(self, batch):
        Clips.batches.append(len(batch["key"]))
        batch["energy"] = self.scale * np.square(batch["audio"]).mean(axis=1)
        return batch


def test_a_block_is_decoded_in_pieces_and_handed_on_in_pieces_of_its_output(tmp_path):
    """Every window of a block at once was what a worker held (a long file's, every one); in pieces of
    ``piece_bytes`` of audio, handed on where the stage's output holds that much (clips), else whole."""
    paths = [write_audio(tmp_path / f"{name}.flac", tone(2.0, 16000, seed=i), 16000) for i, name in enumerate("abc")]
    eight = WindowDecoder(  # 8 windows of 16,000 bytes per file
        plan=lambda key, seconds: [Window(i, 0.25 * i) for i in range(8)],
        sample_rate=16000,
        duration=0.25,
        index_column="window",
    )
    (whole,) = DecodeThenStage(eight, Clips, {"scale": 1.0})(input_rows(paths))
    assert Clips.batches == [24]
    Clips.batches.clear()
    pieces = list(DecodeThenStage(eight, Clips, {"scale": 1.0}, piece_bytes=40_000)(input_rows(paths)))
    assert Clips.batches == [3] * 8 and [len(p["key"]) for p in pieces] == [3] * 8  # 3 windows make 48,000
    for name, values in concat_batches(pieces).items():
        np.testing.assert_array_equal(values, whole[name])
    (energies,) = DecodeThenStage(eight, Energy, {"scale": 1.0}, piece_bytes=40_000)(input_rows(paths))
    np.testing.assert_array_equal(energies["energy"], whole["energy"])  # a small output: handed on whole


def test_an_mp3_without_a_stated_length_has_its_windows_planned_on_its_real_length(tmp_path):
    """Planned on libsndfile's estimate (a few frames long), the score job's last-second window started
    too late and was part padding; FFmpeg decodes such a file to its end, and the plan is made on that."""
    import av

    path = write_mp3_without_length(tmp_path / "rip.mp3", tone(7.0, 16000), 16000)
    with av.open(str(path)) as container:  # FFmpeg's frames, as they come
        decoded = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    assert decoded.dtype == np.float32 and sf.info(str(path)).frames > len(decoded)  # the estimate: long
    decoder = WindowDecoder(
        plan=lambda key, seconds: [Window(0, seconds - 1.0)],  # the last second
        sample_rate=16000,
        duration=1.0,
        index_column="window",
        valid_column="valid",
    )
    (rows,) = decoder(input_rows([path]))
    assert (rows["error"].tolist(), rows["valid"].tolist()) == ([""], [16000])
    assert rows["start_seconds"].tolist() == [len(decoded) / 16000 - 1.0]
    np.testing.assert_array_equal(rows["audio"][0], decoded[-16000:])


def test_concat_batches_fills_columns_a_batch_lacks():
    first = {
        "key": np.array(["a"], dtype=object),
        "x": np.ones((1, 2, 3), np.float32),
        "label": np.array(["l"], dtype=object),
    }
    second = {"key": np.array(["b", "c"], dtype=object), "x": np.full((2, 2, 3), 2, np.float32)}
    out = concat_batches([first, {}, second])
    assert out["key"].tolist() == ["a", "b", "c"] and out["x"].shape == (3, 2, 3)
    assert out["label"].tolist() == ["l", "", ""]
    assert concat_batches([second]) is second and concat_batches([]) == {}


def test_steady_rate_counts_rows_while_every_writer_was_busy():
    one = [
        {"rows": 10, "finished_at": 100.0},
        {"rows": 30, "finished_at": 104.0},
        {"rows": 20, "finished_at": 102.0},
        {"rows": 0, "fenced": True},
    ]
    result = JobResult(manifest={}, seconds=9.0, output="", writes=one)
    assert result.steady_rows_per_second == (30 + 20) / 4.0  # one writer: first to last write
    assert JobResult(manifest={}, seconds=1.0, output="", writes=one[:2]).steady_rows_per_second is None
    # Two writers, the second started 10 s late and the first finished 6 s early: only the
    # 10 s in which both ran count (rows finished in (110, 120]).
    a = [{"rows": 10, "finished_at": t, "writer": "a"} for t in (100.0, 105.0, 110.0, 115.0, 120.0)]
    b = [{"rows": 10, "finished_at": t, "writer": "b"} for t in (110.0, 114.0, 118.0, 122.0, 126.0)]
    both = JobResult(manifest={}, seconds=30.0, output="", writes=a + b)
    assert both.steady_rows_per_second == 10 * 4 / 10.0
    # Writers that never overlapped: back to the span of all writes.
    apart = [{**w, "writer": "b", "finished_at": w["finished_at"] + 30} for w in a]
    assert JobResult(manifest={}, seconds=60.0, output="", writes=a + apart).steady_rows_per_second == 90 / 50.0


def test_what_other_nodes_do_not_see_is_said_in_one_clause():
    from ray_pipelines.engine.shared_paths import blindness, local_files

    assert blindness("/o", [], [], 3) == ""
    assert blindness("/o", ["a [1]"], [], 3) == (
        "node a [1] (1 of the 3 other nodes) does not see the output /o (a local path)"
    )
    assert blindness("/o", [], [("b [2]", "/i/x.flac"), ("a [1]", "/i/y.flac")], 3) == (
        "nodes a [1], b [2] (2 of the 3 other nodes) do not see the input /i/x.flac"
    )
    assert blindness("/o", ["a [1]"], [("a [1]", "/i/x.flac")], 1) == (
        "node a [1] (1 of the 1 other nodes) does not see the output /o (a local path) nor the input /i/x.flac"
    )
    assert blindness("/o", ["a [1]"], [("b [2]", "/i/x.flac")], 2) == (
        "node a [1] (1 of the 2 other nodes) does not see the output /o (a local path); "
        "node b [2] (1 of the 2 other nodes) does not see the input /i/x.flac"
    )
    # only local inputs are looked for on the nodes (a file:// URL as its path)
    assert local_files(["/a/b.flac", "file:///c.wav", "s3://x/y.flac", "synth://0"]) == ["/a/b.flac", "/c.wav"]


def test_a_node_keeps_its_last_answer_when_a_later_look_fails_and_is_dropped_when_it_dies():
    """Seen in a full run of the suite: a node answered that it did not see the paths, and Ray refused the
    next look there ("doesn't exist any more or is infeasible") while the node lived; the run went on as
    if every node saw them."""
    from ray_pipelines.engine.shared_paths import Answer, to_ask_again

    blind, sees = Answer(sees_run=False, missing="/i/x.flac"), Answer(sees_run=True, missing=None)
    answers = {"a": blind, "b": sees}
    assert to_ask_again(["a", "b", "c"], answers, {"a", "b", "c"}) == ["a"]  # c never answered: left out
    assert to_ask_again(["a"], answers, {"a", "b", "c"}) == ["a"] and answers == {"a": blind, "b": sees}
    assert to_ask_again(["a"], answers, None) == ["a"]  # Ray did not say which nodes live
    assert to_ask_again(["a"], answers, {"b", "c"}) == [] and answers == {"b": sees}  # a died
    assert blind.blind and not sees.blind and Answer(sees_run=True, missing="/i/y.flac").blind


def test_a_node_is_asked_what_it_sees_and_a_node_that_cannot_be_asked_is_named_in_one_line(ray_local, tmp_path):
    """A lease file that is JSON but not the lease's object (a damaged or foreign file) is a lease of no run,
    not an error with a remote traceback; a node Ray cannot place the look on gets its reason in one line."""
    from ray_pipelines.engine.shared_paths import Answer, _ask

    here = ray_local.get_runtime_context().get_node_id()
    lease, clip = tmp_path / "_LEASE", tmp_path / "a.flac"
    clip.write_bytes(b"x")
    lease.write_text('{"run_id": "r1"}')
    answers, unasked = _ask([here], str(lease), "r1", [str(clip), str(tmp_path / "gone.flac")])
    assert answers == {here: Answer(sees_run=True, missing=str(tmp_path / "gone.flac"))} and unasked == {}
    lease.write_text("[1, 2]")
    answers, unasked = _ask([here, "ab" * 28], str(lease), "r1", [str(clip)])
    assert answers == {here: Answer(sees_run=False, missing=None)}
    assert list(unasked) == ["ab" * 28] and "\n" not in unasked["ab" * 28]
    assert "NodeAffinitySchedulingStrategy" in unasked["ab" * 28]


def test_the_summary_counts_inputs_error_rows_and_the_listing_in_words():
    from ray_pipelines.engine.runner import JobResult
    from ray_pipelines.engine.summary import format_summary

    counts = dict.fromkeys(("skipped_already_committed", "processed_this_run", "rows_written", "to_retry"), 0)
    inputs = {"new": 1, "changed": 0, "deleted": 0, "unchanged": 4, "left_out": 3, "on_change": "reprocess"}
    manifest = {"counts": {**counts, "listed": 5, "errors": 1, "error_rows": 1}, "inputs": inputs, "splits": {}}
    manifest["timings"] = {}
    lines = format_summary("augment", JobResult(manifest, 1.0, "/out")).splitlines()
    assert "  inputs with errors  1 (1 error row, see errors.jsonl)" in lines
    assert "  inputs listed       8 (5 selected)" in lines
    assert (
        "  input changes       1 new, 0 changed, 0 deleted, 4 unchanged, "
        "3 left out (not selected, never committed or changed)" in lines
    )
    manifest["counts"].update(errors=2, error_rows=7)
    assert "  inputs with errors  2 (7 error rows, see errors.jsonl)" in format_summary(
        "x", JobResult(manifest, 1, "/o")
    )
    # A shard written again whole: its old key changed and is not listed (2 members listed, not 3); of 3
    # deleted inputs under on_delete: keep, one had nothing to keep (a retryable error alone) and left.
    inputs.update(new=0, changed=3, rewritten=1, unchanged=0, left_out=0, deleted=3, deleted_unretried=1)
    inputs["on_delete"] = "keep"
    manifest["counts"]["listed"] = 2
    lines = format_summary("teacher", JobResult(manifest, 1.0, "/out")).splitlines()
    assert "  inputs listed       2" in lines
    assert (
        "  input changes       0 new, 3 changed (reprocessed), 3 deleted (2 kept, 1 with nothing to keep removed), "
        "0 unchanged" in lines
    )


def test_the_summary_names_the_most_common_kinds_of_error_row_with_an_example():
    """A run whose every input failed (a broken model, a min_duration too long) said "inputs with errors 7"
    and "complete yes": why took opening errors.jsonl."""
    from ray_pipelines.engine.manifest import common_errors
    from ray_pipelines.engine.runner import JobResult
    from ray_pipelines.engine.summary import format_summary

    errors = [
        {"key": "a.flac", "index": -1, "reason": "too short: 0.019 s is below min_duration 100 s"},
        {"key": "b.flac", "index": -1, "reason": "too short: 0.5 s is below min_duration 100 s"},
        {"key": "c.flac", "index": 0, "reason": "teacher failed: RuntimeError: shape"},
        {"key": "d.flac", "index": 1, "reason": "teacher failed: RuntimeError: shape"},
        {"key": "e.flac", "index": 0, "reason": "teacher failed: ValueError: nan"},
        {"key": "f.mp3", "index": -1, "reason": "unreadable: OSError: no"},
        {"key": "g.mp3", "index": -1, "reason": "silent: peak -95.0 dBFS is below -90 dBFS"},
    ]
    kinds = common_errors(errors)
    assert kinds == [
        {"reason": "teacher failed", "rows": 3, "example": "c.flac: teacher failed: RuntimeError: shape"},
        {"reason": "too short", "rows": 2, "example": "a.flac: too short: 0.019 s is below min_duration 100 s"},
        {"reason": "silent", "rows": 1, "example": "g.mp3: silent: peak -95.0 dBFS is below -90 dBFS"},
    ]
    assert common_errors([]) == []
    counts = dict.fromkeys(("skipped_already_committed", "processed_this_run", "rows_written", "to_retry"), 0)
    manifest = {"counts": {**counts, "listed": 7, "errors": 7, "error_rows": 7}, "inputs": {}, "splits": {}}
    manifest.update(timings={}, error_reasons=kinds)
    lines = format_summary("teacher", JobResult(manifest, 1.0, "/out")).splitlines()
    at = lines.index("  inputs with errors  7 (7 error rows, see errors.jsonl)")
    assert lines[at + 1 : at + 4] == [
        "  most common errors  3 teacher failed (e.g. c.flac: teacher failed: RuntimeError: shape)",
        "                      2 too short (e.g. a.flac: too short: 0.019 s is below min_duration 100 s)",
        "                      1 silent (e.g. g.mp3: silent: peak -95.0 dBFS is below -90 dBFS)",
    ]
