"""The score job with the default config (DNSMOS, Silero VAD, signal statistics) on real recordings.

Two Ray runs of the shipped score.yaml, one actor and two actors with one input per block, must
write the same bytes; the issue's filter (OVRL >= 3.0, clipping <= 0.1 %, speech >= 50 %) must keep
exactly the clean speech; bad files end as error rows.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
import yaml

import ray_pipelines.jobs.score as score_job
from ray_pipelines.config import resolve_config_path, validate_config
from ray_pipelines.engine.runner import apply_key_lists, run_job
from ray_pipelines.jobs.filter import main as filter_main
from ray_pipelines.scoring.scorers import score_columns
from tests import score_audio

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
BROKEN = ["train/broken/empty.wav", "train/broken/garbage.wav", "train/broken/short.wav"]


def config_for(root, output: str, **overrides):
    """The packaged default config (``--config score``) on the recordings."""
    shipped = yaml.safe_load(resolve_config_path("score").read_text())
    return validate_config(
        score_job.ScoreConfig,
        {
            **shipped,
            "input": str(root / "audio"),
            "output": str(root / output),
            "split_pattern": "^([^/]+)/",  # every clip in train: the snr_db rule's statistics see them all
            "class_pattern": "^[^/]+/([^/]+)/",
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("score_builtin")
    clips = score_audio.write_recordings(root / "audio")
    (root / "audio/train/broken").mkdir()
    (root / "audio/train/broken/empty.wav").write_bytes(b"")
    (root / "audio/train/broken/garbage.wav").write_bytes(bytes(range(256)) * 40)
    score_audio.write_short(root / "audio/train/broken/short.wav", seconds=0.2)  # below min_duration 0.5 s
    one = run_job(score_job.JOB(config_for(root, "one", actors=1)), progress=False)
    two = run_job(score_job.JOB(config_for(root, "two", actors=2, inputs_per_block=1)), progress=False)
    return root, clips, one, two


def rows_of(path) -> dict[str, dict[str, str]]:
    return {r["filename"]: r for r in csv.DictReader(io.StringIO(path.read_text()))}


def test_one_and_two_actors_write_the_same_scores(runs):
    root, clips, one, two = runs
    assert one.counts["rows_written"] == two.counts["rows_written"] == len(clips)
    assert (root / "one/scores.csv").read_bytes() == (root / "two/scores.csv").read_bytes()
    table = pq.read_table(sorted((root / "one/train").glob("part-*.parquet"))[0])
    assert table.column_names == [
        "key",
        "item",
        "split",
        "class",
        "group",
        *score_columns(["dnsmos", "vad", "signal"]),
        "source",
    ]


def test_the_scores_order_recordings_of_known_character(runs):
    root = runs[0]
    rows = {key.split("/")[-1].split(".")[0]: r for key, r in rows_of(root / "one/scores.csv").items()}

    def score(name: str, column: str) -> float:
        return float(rows[name][column])

    assert score("clean", "dnsmos_bak") > score("noisy_0db", "dnsmos_bak") + 1.0  # noise at 0 dB SNR
    assert score("clean", "snr_db") > 30 > 3 > abs(score("noisy_0db", "snr_db"))
    assert score("clipped", "clipping_fraction") > 0.001 > score("clean", "clipping_fraction")
    assert score("tabla", "bandwidth_hz") > 7000 > 4000 > score("tabla_8k", "bandwidth_hz")  # via 8 kHz
    assert score("clean", "speech_fraction") > 0.7 and score("tabla", "speech_fraction") < 0.05  # speech, music
    assert score("clean", "peak_dbfs") < 0 == score("clipped", "peak_dbfs") + 0.0  # 16-bit full scale


def test_the_issues_filter_keeps_only_the_clean_speech_and_names_why(runs):
    root = runs[0]
    out = root / "one"
    assert (out / "kept.txt").read_text().split() == ["train/speech/clean.wav"]
    ignored = (out / "ignored.txt").read_text().split()
    assert set(BROKEN) <= set(ignored) and len(ignored) == 4 + len(BROKEN)
    report = json.loads((out / "filter.json").read_text())
    assert (report["bounds"]["dnsmos_ovrl"]["low"], report["bounds"]["dnsmos_ovrl"]["high"]) == (3.0, None)
    assert report["bounds"]["snr_db"]["side"] == "lower" and report["bounds"]["snr_db"]["high"] is None
    reasons = {r["filename"]: r["reason"] for r in csv.DictReader(io.StringIO((out / "decisions.csv").read_text()))}
    assert reasons["train/speech/noisy_0db.wav"].startswith("dnsmos_ovrl 1.")
    assert "clipping_fraction 0.00768125 above 0.001" in reasons["train/speech/clipped.wav"]
    assert "speech_fraction 0 below 0.5" in reasons["train/music/tabla.flac"]
    # every score has its histogram; the scatter pairs the configured two
    for column in score_columns(["dnsmos", "vad", "signal"]):
        assert (out / "histograms" / f"{column}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    # kept.txt is what the other jobs take as keep_list
    config = config_for(root, "unused", keep_list=str(out / "kept.txt"))
    assert [i.key for i in apply_key_lists(score_job.JOB(config).list_inputs(), config)] == ["train/speech/clean.wav"]


def test_bad_inputs_are_error_rows(runs):
    root, _, one, _ = runs
    assert one.counts["errors"] == len(BROKEN)
    errors = {e["key"]: e["reason"] for e in map(json.loads, (root / "one/errors.jsonl").read_text().splitlines())}
    assert sorted(errors) == BROKEN
    assert errors["train/broken/short.wav"].startswith("too short")
    assert errors["train/broken/empty.wav"] and errors["train/broken/garbage.wav"]


def test_refiltering_the_stored_scores_on_bandwidth_finds_the_upsampled_clips(runs, tmp_path, capsys):
    root = runs[0]
    args = ["--set", "bandwidth_hz.mode=hardcode", "--set", "bandwidth_hz.bounds=[6000, null]"]
    # a scores CSV alone (outside its output: at the root it is filtered as that output) has no rules of its
    # own: only the --set one applies
    csv_copy = tmp_path / "csv" / "scores.csv"
    csv_copy.parent.mkdir()
    csv_copy.write_text((root / "one/scores.csv").read_text())
    assert filter_main([str(csv_copy), *args, "--output", str(tmp_path)]) == 0
    assert "  rules from           no config and 2 --set\n" in capsys.readouterr().out
    kept = (tmp_path / "kept.txt").read_text().split()
    # the telephone speech (3.9 kHz) and the loop through 8 kHz fall below; noise and clipping add highs
    assert kept == ["train/music/tabla.flac", "train/speech/clipped.wav", "train/speech/noisy_0db.wav"]
    capsys.readouterr()
    assert filter_main([str(root / "one"), "--set", "bandwidth.mode=none"]) == 2  # no such score
    assert "filter names bandwidth, which the scores do not have" in capsys.readouterr().err
    # A score's name mistyped in a dotted --set: named as such, not as a new rule that names no mode.
    assert filter_main([str(root / "one"), "--set", "speech_fractio.bounds=[0.1, null]"]) == 2
    err = capsys.readouterr().err
    assert "filter names speech_fractio, which the scores do not have" in err and "mode" not in err
    assert "speech_fractio: did you mean speech_fraction?" in err


def test_refiltering_a_score_output_starts_from_the_rules_its_job_ran_with(runs, tmp_path, capsys):
    """`ray-pipelines filter OUT --set ...` changed the rules named and dropped the job's others: its
    kept.txt, other jobs' keep_list, came back with the noisy, clipped and music clips in it."""
    out = runs[0] / "one"
    assert filter_main([str(out), "--output", str(tmp_path / "same")]) == 0
    assert (tmp_path / "same/kept.txt").read_bytes() == (out / "kept.txt").read_bytes()  # the job's own list
    assert "  rules from           the score job's config (manifest.json)\n" in capsys.readouterr().out
    loosened = ["--set", "dnsmos_ovrl.bounds=[1.0, null]", "--output", str(tmp_path / "loosened")]
    assert filter_main([str(out), *loosened]) == 0  # the job's rule keeps its mode (hardcode)
    assert "  rules from           the score job's config (manifest.json) and 1 --set\n" in capsys.readouterr().out
    bounds = json.loads((tmp_path / "loosened/filter.json").read_text())["bounds"]
    assert (bounds["dnsmos_ovrl"]["mode"], bounds["dnsmos_ovrl"]["low"]) == ("hardcode", 1.0)
    assert (bounds["clipping_fraction"]["high"], bounds["speech_fraction"]["low"]) == (0.001, 0.5)
    kept = (tmp_path / "loosened/kept.txt").read_text().split()
    assert "train/speech/clean.wav" in kept  # still kept; music has no speech, the clipped clip clips
    assert not {"train/music/tabla.flac", "train/speech/clipped.wav"} & set(kept)
