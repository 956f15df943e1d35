"""Filter rules against bounds computed by hand (no Ray), and the filter tool on scores CSVs and on real score
outputs (two small signal-scorer runs on embedded Ray)."""

from __future__ import annotations

import csv
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ray_pipelines.scoring.filters import FilterRule, compute_bounds, run_filters
from ray_pipelines.scoring.report import FilterSettings
from tests.conftest import Lines, free_port

ONE_TO_TEN = np.arange(1.0, 11.0)  # sorted; quantile q sits at position 9q (linear interpolation)


def kept_values(rule: FilterRule, train: np.ndarray, values: np.ndarray | None = None) -> list[float]:
    values = train if values is None else values
    return values[compute_bounds(rule, train).keep(values)].tolist()


def test_median_iqr_by_hand():
    # Q1 = 1 + 0.25*9 = 3.25, Q3 = 1 + 0.75*9 = 7.75, IQR = 4.5
    bounds = compute_bounds(FilterRule(mode="median"), ONE_TO_TEN)
    assert (bounds.low, bounds.high) == pytest.approx((3.25 - 1.5 * 4.5, 7.75 + 1.5 * 4.5))
    assert bounds.report["statistics"] == pytest.approx({"q1": 3.25, "median": 5.5, "q3": 7.75, "iqr": 4.5})
    narrow = FilterRule(mode="median", k=0.25)  # [2.125, 8.875]
    assert kept_values(narrow, ONE_TO_TEN) == [3, 4, 5, 6, 7, 8]


def test_mean_std_by_hand_population_and_sample():
    population = math.sqrt(8.25)  # mean 5.5; sum of squared deviations 82.5 over 10
    sample = math.sqrt(82.5 / 9)
    bounds = compute_bounds(FilterRule(mode="mean"), ONE_TO_TEN)
    assert (bounds.low, bounds.high) == pytest.approx((5.5 - 1.5 * population, 5.5 + 1.5 * population))
    assert kept_values(FilterRule(mode="mean"), ONE_TO_TEN) == [2, 3, 4, 5, 6, 7, 8, 9]  # [1.19, 9.81]
    assert kept_values(FilterRule(mode="mean", ddof=1), ONE_TO_TEN) == list(range(1, 11))  # [0.96, 10.04]
    assert compute_bounds(FilterRule(mode="mean", ddof=1), ONE_TO_TEN).high == pytest.approx(5.5 + 1.5 * sample)


def test_percentile_by_hand():
    bounds = compute_bounds(FilterRule(mode="percentile"), ONE_TO_TEN)
    assert (bounds.low, bounds.high) == pytest.approx((1.45, 9.55))
    assert kept_values(FilterRule(mode="percentile"), ONE_TO_TEN) == [2, 3, 4, 5, 6, 7, 8, 9]
    wide = FilterRule(mode="percentile", lower_quantile=0.0, upper_quantile=1.0)
    assert kept_values(wide, ONE_TO_TEN) == list(range(1, 11))


def test_hardcode_defaults_and_inclusive_bounds():
    # the seed's [1.5, 7.0]: the reconstruction scores' default (FilterSettings.rules); other scores must give bounds
    rule = FilterSettings(signal_energy=FilterRule(mode="hardcode")).rules(["signal_energy"])["signal_energy"]
    bounds = compute_bounds(rule, ONE_TO_TEN)
    assert (bounds.low, bounds.high) == (1.5, 7.0)
    assert kept_values(rule, ONE_TO_TEN) == [2, 3, 4, 5, 6, 7]  # 7.0 itself is kept
    with pytest.raises(ValueError, match="needs bounds"):
        compute_bounds(FilterRule(mode="hardcode"), ONE_TO_TEN)
    assert kept_values(FilterRule(mode="hardcode", bounds=(2.0, 5.0)), np.array([1.0, 2.0, 2.0, 5.0, 5.5])) == [2, 2, 5]


def test_hard_cutoffs_replace_computed_bounds():
    rule = FilterRule(mode="median", hard_high=6.0)  # computed [-3.5, 14.5] -> [-3.5, 6]
    bounds = compute_bounds(rule, ONE_TO_TEN)
    assert (bounds.low, bounds.high) == pytest.approx((-3.5, 6.0))
    assert bounds.report["computed"] == pytest.approx({"low": -3.5, "high": 14.5})
    assert kept_values(rule, ONE_TO_TEN) == [1, 2, 3, 4, 5, 6]
    # a hard bound looser than the computed one still replaces it
    loose = compute_bounds(FilterRule(mode="median", k=0.25, hard_low=0.0), ONE_TO_TEN)
    assert (loose.low, loose.high) == pytest.approx((0.0, 8.875))
    mean_rule = FilterRule(mode="mean", k=1.0, hard_low=4.0, hard_high=20.0)
    assert kept_values(mean_rule, ONE_TO_TEN) == [4, 5, 6, 7, 8, 9, 10]


def test_ties_in_quantiles_and_on_the_bounds():
    # sorted [2, 2, 2, 2, 5, 9]: Q1 at position 1.25 -> 2, Q3 at 3.75 -> 2 + 0.75 * 3 = 4.25
    values = np.array([9.0, 2.0, 5.0, 2.0, 2.0, 2.0])
    bounds = compute_bounds(FilterRule(mode="median"), values)
    assert bounds.report["statistics"]["q1"] == 2.0
    assert bounds.report["statistics"]["q3"] == pytest.approx(4.25)
    assert (bounds.low, bounds.high) == pytest.approx((2.0 - 3.375, 4.25 + 3.375))
    assert bounds.keep(values).tolist() == [False, True, True, True, True, True]
    # all tied: IQR 0, bounds [3, 3]; equal values stay, anything else goes
    flat = compute_bounds(FilterRule(mode="median"), np.full(4, 3.0))
    assert (flat.low, flat.high) == (3.0, 3.0)
    assert flat.keep(np.array([3.0, 3.0, 3.0000001, 2.9999999])).tolist() == [True, True, False, False]
    assert compute_bounds(FilterRule(mode="mean"), np.full(4, 3.0)).keep(np.array([3.0, 3.1])).tolist() == [True, False]


def test_empty_train_split_leaves_only_hard_cutoffs():
    empty = np.zeros(0)
    for mode in ("median", "mean", "percentile"):
        bounds = compute_bounds(FilterRule(mode=mode), empty)
        assert (bounds.low, bounds.high) == (None, None)
        assert "undefined" in bounds.report["note"]
        assert bounds.keep(np.array([-1e9, 0.0, 1e9, np.nan])).tolist() == [True, True, True, False]
    hard = compute_bounds(FilterRule(mode="median", hard_high=2.0), empty)
    assert (hard.low, hard.high) == (None, 2.0)
    assert compute_bounds(FilterRule(mode="hardcode", bounds=(None, 7.0)), empty).high == 7.0
    # sample std of one item is undefined too
    assert compute_bounds(FilterRule(mode="mean", ddof=1), np.array([4.0])).low is None


def test_statistics_come_from_train_only_and_apply_to_every_split():
    splits = np.array(["train"] * 10 + ["val"] * 3)
    loss = np.concatenate([ONE_TO_TEN, [100.0, 5.0, -10.0]])  # val outliers must not move the bounds
    energy = np.ones(13)
    result = run_filters(
        {"reconstruction_loss": loss, "signal_energy": energy},
        splits,
        {"reconstruction_loss": FilterRule(mode="median"), "signal_energy": FilterRule(mode="none")},
    )
    assert (result.bounds["reconstruction_loss"].low, result.bounds["reconstruction_loss"].high) == pytest.approx(
        (-3.5, 14.5)
    )
    assert result.kept.tolist() == [True] * 10 + [False, True, False]
    assert result.bounds["reconstruction_loss"].report["rejected"] == {"train": 0, "val": 2}
    assert result.reasons[10] == "reconstruction_loss 100 above 14.5"
    assert result.reasons[12] == "reconstruction_loss -10 below -3.5"
    # a split with no items is fine too
    nothing = run_filters(
        {"reconstruction_loss": np.zeros(0), "signal_energy": np.zeros(0)},
        np.zeros(0, str),
        {"reconstruction_loss": FilterRule(), "signal_energy": FilterRule()},
    )
    assert nothing.kept.tolist() == [] and nothing.bounds["signal_energy"].low is None


def test_union_of_the_two_filters_and_non_finite_scores():
    splits = np.array(["train"] * 6)
    loss = np.array([1.0, 1.0, 9.0, 9.0, 1.0, np.nan])
    energy = np.array([2.0, 8.0, 2.0, 8.0, 2.0, 2.0])
    rules = {
        "reconstruction_loss": FilterRule(mode="hardcode", bounds=(0.0, 5.0)),
        "signal_energy": FilterRule(mode="hardcode", bounds=(0.0, 5.0)),
    }
    result = run_filters({"reconstruction_loss": loss, "signal_energy": energy}, splits, rules)
    assert result.kept.tolist() == [True, False, False, False, True, False]
    assert result.reasons[1] == "signal_energy 8 above 5"
    assert result.reasons[2] == "reconstruction_loss 9 above 5"
    assert result.reasons[3] == "reconstruction_loss 9 above 5; signal_energy 8 above 5"
    assert result.reasons[5] == "reconstruction_loss is not finite"
    # NaN stays out of the statistics
    assert compute_bounds(FilterRule(mode="median"), np.append(ONE_TO_TEN, np.nan)).high == pytest.approx(14.5)


def test_rule_validation_names_the_problem():
    # The packaged reconstruction-loss rules hold hard_high: a dotted --set of their mode is refused, saying how.
    with pytest.raises(ValidationError, match=r"hard_low/hard_high apply to the median and mean.*given whole, "):
        FilterRule(mode="percentile", hard_low=1.0)
    with pytest.raises(ValidationError, match="lower_quantile"):
        FilterRule(mode="percentile", lower_quantile=0.9, upper_quantile=0.1)
    with pytest.raises(ValidationError, match="bounds"):
        FilterRule(mode="hardcode", bounds=(7.0, 1.5))


def test_a_hardcode_rule_whose_side_keeps_an_open_bound_is_refused():
    """``side: upper`` with ``bounds: [3, null]`` kept [-inf, inf]: every value, without a word."""
    said = "side 'upper' keeps only the high bound, which bounds [3, null] leaves open (null): the rule would keep"
    with pytest.raises(ValidationError, match=re.escape(said)):
        FilterRule(mode="hardcode", side="upper", bounds=(3.0, None))
    with pytest.raises(
        ValidationError, match=re.escape("side 'lower' keeps only the low bound, which bounds [null, 7]")
    ):
        FilterRule(mode="hardcode", side="lower", bounds=(None, 7.0))
    # the side's own bound given: that cut alone
    assert kept_values(FilterRule(mode="hardcode", side="lower", bounds=(3.0, None)), ONE_TO_TEN) == list(
        ONE_TO_TEN[2:]
    )
    assert kept_values(FilterRule(mode="hardcode", side="upper", bounds=(3.0, 5.0)), ONE_TO_TEN) == [1.0, 2, 3, 4, 5]


def test_a_rule_without_a_mode_given_another_modes_option_is_refused_not_a_median_rule():
    with pytest.raises(ValidationError, match="bounds is an option of mode hardcode; .*so it is 'median': set mode"):
        FilterRule(bounds=(3.0, None))
    with pytest.raises(ValidationError, match="ddof is an option of mode mean"):
        FilterRule(ddof=1)
    with pytest.raises(ValidationError, match="upper_quantile is an option of mode percentile"):
        FilterRule(upper_quantile=0.9)
    assert FilterRule(k=2.0).mode == "median"  # median's own option
    # a mode named: other modes' options stay (what --set NAME.mode=... leaves) and are not used
    rule = FilterRule(mode="percentile", k=2.0, bounds=(0.0, 1.0))
    assert kept_values(rule, ONE_TO_TEN) == kept_values(FilterRule(mode="percentile"), ONE_TO_TEN)


def test_the_filter_tool_says_in_one_line_that_the_store_does_not_answer(capsys, tmp_path):
    from ray_pipelines.jobs.filter import main as filter_main

    unreachable = [f"endpoint_url=http://127.0.0.1:{free_port()}", "config_kwargs.retries.max_attempts=1"]
    options = [a for o in unreachable for a in ("--storage-option", o)]
    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\n")
    rule = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}"]
    # the scores' store, then the output's (its check for another job's output there)
    for args in (["s3://bucket/scores", *options], [str(scores), *rule, "--output", "s3://bucket/kept", *options]):
        assert filter_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("ray-pipelines filter: EndpointConnectionError: Could not connect to the endpoint URL")
        assert len(err.splitlines()) == 1
    assert filter_main(["az://container/scores"]) == 2  # no adlfs: one line, not an ImportError's traceback
    assert capsys.readouterr().err.startswith("ray-pipelines filter: az://container/scores: az:// needs a package")
    assert filter_main(["s3://bucket/scores", "--output", "s3:/bucket/kept"]) == 2  # one slash short
    assert capsys.readouterr().err.endswith("a local folder named s3:, not a URL; did you mean s3://bucket/kept?\n")
    # filter.json records where the scores came from: a password in the URL is refused, and not shown
    assert filter_main(["s3://key:hunter2@bucket/scores", "--output", "/tmp/unused"]) == 2
    assert capsys.readouterr().err == (
        "ray-pipelines filter: s3://key:***@bucket/scores holds credentials (user:password@); "
        "set them in the environment\n"
    )
    assert filter_main(["https://host/scores.csv"]) == 2  # the lists would go beside it: on a web server
    assert capsys.readouterr().err.endswith(
        "https:// is read-only here: write to a local path or object storage (s3://...); give --output\n"
    )


def test_the_filter_tool_names_its_own_set_lines_for_rules_on_missing_scores(tmp_path, capsys):
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db,clipping_fraction\na.wav,train,20,0\nb.wav,val,10,0.5\n")
    assert filter_main([str(scores), "--config", "score"]) == 2  # the packaged score config's rules
    assert capsys.readouterr().err.endswith(
        "or take them out of the filter section (--set dnsmos_ovrl=null --set speech_fraction=null "
        "--set scatter=null)\n"
    )
    out = tmp_path / "out"
    taken_out = ["--set", "dnsmos_ovrl=null", "--set", "speech_fraction=null", "--set", "scatter=null"]
    assert filter_main([str(scores), "--config", "score", *taken_out, "--output", str(out)]) == 0
    assert (out / "kept.txt").read_text().split() == ["a.wav"]  # b.wav: clipping above 0.001


def test_the_key_lists_name_every_key_as_a_keep_list_reads_it_back(tmp_path):
    """kept.txt / ignored.txt are other jobs' keep_list / ignore_list: a key that a plain line would lose
    (a leading '#' read as a comment, spaces stripped, a line break splitting it) is written quoted."""
    from ray_pipelines.jobs.filter import main as filter_main
    from ray_pipelines.sources import read_key_list

    awkward = ["#1 take.wav", " intro.wav", "outro.wav ", "new\nline.wav", '"quoted".wav', "tab\tin.wav", "a/ok.wav"]
    rows = [[key, "train", "20" if i % 2 else "0"] for i, key in enumerate(awkward)]
    scores = tmp_path / "scores.csv"
    with scores.open("w", newline="") as f:
        csv.writer(f).writerows([["filename", "split", "snr_db"], *rows])
    out = tmp_path / "out"
    assert filter_main([str(scores), "--set", "snr_db={mode: hardcode, bounds: [10, null]}", "--output", str(out)]) == 0
    kept, ignored = read_key_list(str(out / "kept.txt")), read_key_list(str(out / "ignored.txt"))
    assert kept == set(awkward[1::2]) and ignored == set(awkward[0::2])
    # keys a plain line holds stay plain: the lists still read as one path per line
    assert (out / "kept.txt").read_text().splitlines() == ['" intro.wav"', '"new\\nline.wav"', "tab\tin.wav"]
    assert '"#1 take.wav"' in (out / "ignored.txt").read_text().splitlines()


def test_the_filter_tool_warns_of_predictions_that_name_no_scored_item(tmp_path, capsys):
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\ntrain/a.wav,train,20\ntrain/b.wav,train,5\n")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("filename,prediction\na.wav,good\ntrain/b.wav,bad\n")  # a.wav: not the item's key
    rules = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}", "--set", f"predictions={predictions}"]
    assert filter_main([str(scores), *rules, "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == (
        "ray-pipelines filter: warning: filter.predictions: 1 of 2 scored items have a prediction (the others do "
        "not vote); 1 row names no scored item (a.wav): a row's filename must be the item's key (scores.csv's "
        "filename column)\n"
    )


def test_the_filter_tool_refuses_a_train_split_the_scores_do_not_have(tmp_path, capsys):
    """A mistyped train_split (``training``) gave every computed rule ``[-inf, inf]``: everything kept, exit 0."""
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\nb.wav,train,21\nc.wav,val,-40\n")
    median = ["--set", "snr_db={mode: median, k: 1.5}", "--output", str(tmp_path / "out")]
    assert filter_main([str(scores), *median, "--set", "train_split=training"]) == 2
    assert capsys.readouterr().err == (
        "ray-pipelines filter: train_split 'training' is no split of the scores (splits: train, val); the bounds "
        "of snr_db come from it (--set train_split=<one of: train, val>)\n"
    )
    assert not (tmp_path / "out").exists()
    assert filter_main([str(scores), *median]) == 0
    assert (tmp_path / "out" / "kept.txt").read_text().split() == ["a.wav", "b.wav"]
    # bounds given by hand need no train split
    hardcode = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}", "--set", "train_split=training"]
    assert filter_main([str(scores), *hardcode, "--output", str(tmp_path / "hard")]) == 0


def test_the_filter_tool_does_not_write_into_another_jobs_output(tmp_path, capsys):
    """``--output`` naming another output (a second score run, an augment output) replaced its kept.txt, the
    list other jobs take as their keep_list, without a word."""
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "_job.json").write_text('{"job": "augment", "fingerprint": "f"}')
    (other / "kept.txt").write_text("theirs.wav\n")
    assert (
        filter_main([str(scores), "--set", "snr_db={mode: hardcode, bounds: [0, null]}", "--output", str(other)]) == 2
    )
    assert capsys.readouterr().err == (
        f"ray-pipelines filter: --output {other} holds the augment job's output: give the filter outputs a "
        "folder of their own\n"
    )
    assert (other / "kept.txt").read_text() == "theirs.wav\n"
    # nor, without --output, into the folder of a CSV that sits in another job's output
    (other / "scores.csv").write_text(scores.read_text())
    assert filter_main([str(other / "scores.csv"), "--set", "snr_db={mode: hardcode, bounds: [0, null]}"]) == 2
    assert capsys.readouterr().err == (
        f"ray-pipelines filter: {other}, the scores CSV's folder (where the filter outputs go without --output), "
        "holds the augment job's output: give the filter outputs a folder of their own (--output)\n"
    )
    assert (other / "kept.txt").read_text() == "theirs.wav\n"
    # a score output's run stopped before its first commit: what to do about it is said, for its root and
    # for a scores CSV at its root (that output's, filtered as it is: it has no committed rules or errors)
    own = tmp_path / "score-out"
    own.mkdir()
    (own / "_job.json").write_text('{"job": "score", "fingerprint": "f"}')
    (own / "scores.csv").write_text(scores.read_text())
    rule = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}"]
    for args in ([str(own)], [str(own / "scores.csv"), *rule, "--output", str(own)]):
        assert filter_main(args) == 1
        assert capsys.readouterr().err == (
            f"ray-pipelines filter: FileNotFoundError: {own} has no manifest.json (not a committed score output; "
            "a run of the score job started it and never committed: run it again to finish it)\n"
        )
    assert not (own / "kept.txt").exists()


def test_the_filter_tool_names_a_job_config_without_a_filter_section(tmp_path, capsys):
    """Before: one "Input should be a valid dictionary or instance of FilterRule" line per key of the file."""
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\n")
    score_config = tmp_path / "mine.yaml"  # a score config whose input and output come by --set
    score_config.write_text("scorers: [signal]\nsample_rate: 16000\n")
    for config in (str(score_config), "augment"):
        assert filter_main([str(scores), "--config", config, "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "".join(
        f"ray-pipelines filter: config file {config} is a job's config with no filter section: give a score "
        "config that has one, or a filter section of its own (such as the packaged score-filter)\n"
        for config in (score_config, "augment")
    )


def test_a_scores_csv_cell_that_is_not_a_number_is_named_by_line_and_column(tmp_path, capsys):
    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db,loss\na.wav,train,20,0.5\nb.wav,train,,0.4\n")
    assert filter_main([str(scores), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"ray-pipelines filter: {scores}: line 3 (b.wav): snr_db is not a number: '' (a missing score "
        "is written nan: its item is then not kept)\n"
    )
    # Run as a module (its own __main__): the same line, not a NameError from a helper defined below main.
    done = subprocess.run(
        [sys.executable, "-m", "ray_pipelines.jobs.filter", str(scores), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.endswith("its item is then not kept)\n"), done.stderr


def score_signal(root, clips: dict[str, np.ndarray | bytes], rules: dict) -> Path:
    """A real score job output (the signal scorer on embedded Ray) of ``clips`` (key: audio, or bytes that
    are no audio), written under ``root``, with the filter ``rules``."""
    import ray_pipelines.jobs.score as score_job
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from tests.audio_helpers import write_audio

    for key, clip in clips.items():
        path = root / "audio" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(clip) if isinstance(clip, bytes) else write_audio(path, clip)
    config = {
        "input": str(root / "audio"),
        "output": str(root / "out"),
        "scorers": ["signal"],
        "sample_rate": 16000,
        "duration": 0.5,
        "min_duration": 0.1,
        "actors": 1,
        "filter": rules,
    }
    assert run_job(score_job.JOB(validate_config(score_job.ScoreConfig, config)), progress=False).complete
    return root / "out"


@pytest.fixture(scope="module")
def signal_scored(tmp_path_factory, ray_local):
    """A score output with train and val splits, a quiet clip its rule ignores and a file that is no audio."""
    from tests.audio_helpers import tone

    clips = {
        "train/good/a.wav": tone(0.6, amplitude=0.5, seed=1),
        "train/good/b.wav": tone(0.6, freq=330.0, amplitude=0.4, seed=2),
        "train/bad/quiet.wav": tone(0.6, amplitude=0.005, seed=3),  # rms about -49 dBFS
        "val/good/c.wav": tone(0.6, freq=550.0, amplitude=0.5, seed=4),
        "val/bad/broken.wav": b"this is not audio",
    }
    rules = {"rms_dbfs": {"mode": "hardcode", "bounds": [-30.0, None]}, "peak_dbfs": {"mode": "median"}}
    return score_signal(tmp_path_factory.mktemp("signal_scored"), clips, rules)


FILTER_FILES = ("kept.txt", "ignored.txt", "decisions.csv", "groups.csv", "summary.json")


def test_a_scores_csv_at_a_score_outputs_root_is_filtered_as_that_output(signal_scored, tmp_path, capsys):
    """``filter OUT/scores.csv`` (no --output) rewrote the output's kept.txt with every scored key (no rules)
    and dropped its failed inputs (errors.jsonl) from both lists."""
    from ray_pipelines.jobs.filter import main as filter_main

    out = tmp_path / "out"
    shutil.copytree(signal_scored, out)
    jobs = {name: (out / name).read_bytes() for name in FILTER_FILES}
    assert jobs["kept.txt"].decode().split() == ["train/good/a.wav", "train/good/b.wav", "val/good/c.wav"]
    assert jobs["ignored.txt"].decode().split() == ["train/bad/quiet.wav", "val/bad/broken.wav"]

    assert filter_main([str(out / "scores.csv")]) == 0
    assert "rules from           the score job's config (manifest.json)" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in FILTER_FILES} == jobs  # the job's own lists again
    # the same as filtering the output root, a --set changing the job's rule alike
    looser = ["--set", "rms_dbfs.bounds=[-60, null]"]
    assert filter_main([str(out), *looser, "--output", str(tmp_path / "from-root")]) == 0
    assert filter_main([str(out / "scores.csv"), *looser, "--output", str(tmp_path / "from-csv")]) == 0
    for name in FILTER_FILES:
        assert (tmp_path / "from-root" / name).read_bytes() == (tmp_path / "from-csv" / name).read_bytes()
    assert (tmp_path / "from-csv" / "ignored.txt").read_text() == "val/bad/broken.wav\n"  # its error counts
    # an evaluation script's CSV beside the job's is a CSV of its own (no rules of the job's, none of its errors)
    (out / "eval.csv").write_bytes((out / "scores.csv").read_bytes())
    assert filter_main([str(out / "eval.csv"), "--output", str(tmp_path / "eval")]) == 0
    assert "rules from           no config" in capsys.readouterr().out
    assert "val/bad/broken.wav" not in (tmp_path / "eval" / "ignored.txt").read_text()


def test_scores_without_their_train_split_are_filtered_as_the_job_filtered_them(tmp_path, ray_local, capsys):
    """The job warned that its rules kept everything ("ray-pipelines filter reruns the rules"); the filter tool
    then refused the job's own train_split (exit 2), though a rerun without --set writes the job's lists again."""
    from ray_pipelines.jobs.filter import main as filter_main
    from tests.audio_helpers import tone

    clips = {
        "val/good/a.wav": tone(0.6, amplitude=0.5, seed=1),
        "val/good/b.wav": tone(0.6, freq=330.0, amplitude=0.4, seed=2),
        "val/bad/quiet.wav": tone(0.6, amplitude=0.005, seed=3),
    }
    rules = {"rms_dbfs": {"mode": "hardcode", "bounds": [-30.0, None]}, "peak_dbfs": {"mode": "median"}}
    logger, said = logging.getLogger("ray_pipelines.jobs.score"), Lines()
    logger.addHandler(said)
    try:
        out = score_signal(tmp_path, clips, rules)
    finally:
        logger.removeHandler(said)
    # What the job's run wrote to stderr is not the filter's (another test's logging handler on a stream since
    # closed adds its "--- Logging error ---" there, depending on what the worker ran before)
    capsys.readouterr()
    problem = (
        "train_split 'train' is no split of the scores (splits: val); the bounds of peak_dbfs come from it: they "
        "keep everything"
    )
    fix = "--set train_split=<one of: val> reruns the rules with their bounds from a split the scores have"
    assert f"score: filter.{problem} (ray-pipelines filter {out} {fix})" in said.lines
    jobs = {name: (out / name).read_bytes() for name in FILTER_FILES}
    assert jobs["ignored.txt"] == b"val/bad/quiet.wav\n"  # the hard bound still cuts

    assert filter_main([str(out)]) == 0
    assert capsys.readouterr().err == f"ray-pipelines filter: warning: {problem} ({fix})\n"
    assert {name: (out / name).read_bytes() for name in FILTER_FILES} == jobs
    # a train_split given here that the scores do not have is refused as before (a mistyped one)
    assert filter_main([str(out), "--set", "train_split=training", "--output", str(tmp_path / "typo")]) == 2
    assert capsys.readouterr().err.endswith("the bounds of peak_dbfs come from it (--set train_split=<one of: val>)\n")
    assert not (tmp_path / "typo").exists()
    assert filter_main([str(out), "--set", "train_split=val", "--output", str(tmp_path / "val")]) == 0
    assert capsys.readouterr().err == ""


def test_the_filter_tool_makes_no_bucket_for_a_mistyped_output(s3_endpoint, tmp_path, capsys):
    """s3fs's makedirs created the missing bucket of a mistyped ``--output`` and wrote there, exit 0."""
    import uuid

    import s3fs

    from ray_pipelines.jobs.filter import main as filter_main

    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\n")
    typo = f"typo-{uuid.uuid4().hex[:12]}"
    rule = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}"]
    endpoint = ["--storage-option", f"endpoint_url={s3_endpoint}"]
    assert filter_main([str(scores), *rule, "--output", f"s3://{typo}/f", *endpoint]) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ray-pipelines")]  # (moto logs)
    assert said == [
        f"ray-pipelines filter: write failed: no bucket {typo!r} (or no right to see it): s3://{typo}/f; "
        "the filter tool makes none"
    ]
    assert not s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).exists(typo)


def test_a_rerun_removes_the_summaries_and_plots_of_splits_and_scores_no_longer_there(tmp_path):
    """A split whose inputs were all pruned left its summary/<split>.csv, and a filter run into a reused
    ``--output`` left the histograms (and scatter) of scores the new scores do not have: the outputs
    differed from a fresh run's."""
    from ray_pipelines.jobs.filter import main as filter_main
    from ray_pipelines.scoring.report import write_summaries
    from ray_pipelines.scoring.table import ScoreTable
    from ray_pipelines.storage import Storage

    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    before.write_text("filename,split,snr_db,loss\na.wav,train,20,1\nb.wav,train,5,2\nh.wav,holdout,9,3\n")
    after.write_text("filename,split,snr_db\na.wav,train,20\nb.wav,train,5\n")
    rule = ["--set", "snr_db={mode: hardcode, bounds: [10, null]}"]
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert filter_main([str(before), *rule, "--output", str(out)]) == 0
    assert {p.name for p in (out / "summary").iterdir()} == {"train.csv", "holdout.csv"}
    assert {p.name for p in (out / "histograms").iterdir()} == {"snr_db.png", "loss.png"}
    for own in ("histograms/README.txt", "histograms/loss_curve.png", "summary/by_speaker.csv"):
        (out / own).write_text("not the filter's")  # files it did not record stay, whatever their suffix

    assert filter_main([str(after), *rule, "--output", str(out)]) == 0
    assert filter_main([str(after), *rule, "--output", str(fresh)]) == 0
    written = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*"))
    assert "scatter.png" not in written  # one score: no scatter
    own = ["histograms/README.txt", "histograms/loss_curve.png", "summary/by_speaker.csv"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted([*written, *own])

    # the score job's rewrite (its after_commit) removes a pruned split's summary the same way
    write_summaries(Storage(out), ScoreTable.from_csv(str(before)))
    assert (out / "summary" / "holdout.csv").exists()
    write_summaries(Storage(out), ScoreTable.from_csv(str(after)))
    assert sorted(p.name for p in (out / "summary").iterdir()) == ["by_speaker.csv", "train.csv"]


def test_the_filter_tool_does_not_write_beside_scores_a_live_run_is_committing(signal_scored, tmp_path, capsys):
    """A run of the score job holding the output's lease rewrote kept.txt and filter.json at its commit,
    after the filter tool had written them there (exit 0)."""
    import json

    from ray_pipelines.engine.lease import Holder
    from ray_pipelines.jobs.filter import main as filter_main

    out = tmp_path / "out"
    shutil.copytree(signal_scored, out)
    job_lists = (out / "kept.txt").read_bytes()
    holder = Holder.this_process("run-nightly-7", timeout_s=600.0)  # this process: alive
    (out / "_lease.json").write_bytes(holder.encode())
    looser = ["--set", "rms_dbfs.bounds=[-60, null]"]
    for scores in (out, out / "scores.csv"):
        assert filter_main([str(scores), *looser]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ray-pipelines filter: {out} is in use by run run-nightly-7 on host ")
        assert err.endswith(
            ", whose commit would write its own filter outputs over these: give the filter outputs a folder of "
            "their own (--output), or wait for that run to finish (a run that is gone holds it until 600 s "
            "after its last heartbeat)\n"
        )
    assert (out / "kept.txt").read_bytes() == job_lists
    assert filter_main([str(out), *looser, "--output", str(tmp_path / "mine")]) == 0
    assert "train/bad/quiet.wav" in (tmp_path / "mine" / "kept.txt").read_text()
    # a lease a run would take over (its heartbeats stopped past its timeout) holds nothing back
    stale = json.loads(holder.encode())
    stale["heartbeat_at"] -= 3600
    (out / "_lease.json").write_text(json.dumps(stale))
    assert filter_main([str(out), *looser]) == 0
    assert "train/bad/quiet.wav" in (out / "kept.txt").read_text()


def test_the_filter_tool_warns_of_scores_whose_last_run_did_not_finish(signal_scored, tmp_path, capsys):
    """An exit-3 run's output (``complete: false``) was filtered without a word: its inputs to retry are in
    neither list's scores."""
    import json

    from ray_pipelines.jobs.filter import main as filter_main

    out = tmp_path / "out"
    shutil.copytree(signal_scored, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    manifest["counts"]["to_retry"] = 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert filter_main([str(out), "--output", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().err == (
        f"ray-pipelines filter: warning: {out} is incomplete: its last run left 2 inputs to retry (no _SUCCESS), "
        "whose scores are not there: rerun the job to finish it; filtering the scores committed\n"
    )


@pytest.fixture
def read_only_s3():
    """A moto server in a process of its own that checks credentials (after the 7 requests that set it up),
    with a bucket ``out`` that two users may read and not write: ``list_bucket`` (s3:ListBucket alone of
    the listings: moto refuses its ListObjectsV2) and ``list_all``. Returns {user: the --storage-option
    arguments that give its keys}."""
    import json

    import boto3

    from tests.conftest import credential_checking_moto

    with credential_checking_moto(7) as endpoint:
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", **admin)
        actions = {
            "list_bucket": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
            "list_all": ["s3:Get*", "s3:Head*", "s3:List*"],
        }
        options = {}
        for user, allowed in actions.items():
            iam.create_user(UserName=user)
            keys = iam.create_access_key(UserName=user)["AccessKey"]
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
            given = [f"endpoint_url={endpoint}", f"key={keys['AccessKeyId']}", f"secret={keys['SecretAccessKey']}"]
            options[user] = [a for o in given for a in ("--storage-option", o)]
        boto3.client("s3", **admin).create_bucket(Bucket="out")
        yield options


def test_a_store_refusing_the_filter_outputs_is_named_with_its_location(read_only_s3, tmp_path, capsys):
    """Read-only credentials gave "PermissionError: Access Denied", naming no location; the job says
    "write failed: Access Denied: s3://out/s1"."""
    from ray_pipelines.jobs.filter import main as filter_main

    options = read_only_s3
    scores = tmp_path / "scores.csv"
    scores.write_text("filename,split,snr_db\na.wav,train,20\n")
    rule = ["--set", "snr_db={mode: hardcode, bounds: [0, null]}"]
    # refused at the look for another job's output there (a listing), then at the first write
    for user in ("list_bucket", "list_all"):
        assert filter_main([str(scores), *rule, "--output", "s3://out/s1", *options[user]]) == 1
        assert capsys.readouterr().err == "ray-pipelines filter: write failed: Access Denied: s3://out/s1\n", user
