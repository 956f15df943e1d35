"""The score configs: shipped examples validate, bad values are named, filters stay out of the fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipelines.config import ConfigError, load_config, validate_config
from ray_pipelines.jobs.filter import load_filter_settings
from ray_pipelines.jobs.score import ScoreConfig
from ray_pipelines.scoring.inputs import PathLabels

CONFIGS = Path(__file__).resolve().parents[1] / "ray_pipelines" / "configs"


@pytest.mark.parametrize("name", ["score.yaml", "score-mae.yaml", "score-pt.yaml", "score-shards.yaml"])
def test_example_configs_validate(name):
    config = load_config(ScoreConfig, CONFIGS / name)
    assert config.mel_frames == (313 if name == "score.yaml" else 130)
    assert load_filter_settings(str(CONFIGS / name), []) == config.filter


def test_the_default_config_runs_the_pretrained_and_signal_scorers_with_the_issue_filter():
    config = load_config(ScoreConfig, CONFIGS / "score.yaml")
    assert config.scorer_names == ["dnsmos", "vad", "signal"]
    assert config.score_columns[:5] == ["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "speech_fraction"]
    rules = config.filter.rules(config.score_columns)
    assert rules["dnsmos_ovrl"].bounds == (3.0, None) and rules["speech_fraction"].bounds == (0.5, None)
    assert rules["clipping_fraction"].bounds == (None, 0.001)
    assert "reconstruction_loss" not in config.score_columns
    # the class defaults pick the scorers by source
    assert validate_config(ScoreConfig, {"input": "in", "output": "out"}).scorer_names == ["dnsmos", "vad", "signal"]
    tensors = validate_config(ScoreConfig, {"input": "in", "output": "out", "source": "pt"})
    assert tensors.scorer_names == ["reconstruction"]


def test_filter_section_file_and_overrides():
    settings = load_filter_settings(
        str(CONFIGS / "score-filter.yaml"), ["signal_energy.mode=percentile", "signal_energy.upper_quantile=0.9"]
    )
    assert settings.reconstruction_loss.hard_high == 7.0
    assert (settings.signal_energy.mode, settings.signal_energy.upper_quantile) == ("percentile", 0.9)
    with pytest.raises(ConfigError, match="signal_energy.mode"):
        load_filter_settings(None, ["signal_energy.mode=iqr"])
    # any score column is a rule; null bounds are open
    settings = load_filter_settings(None, ["dnsmos_ovrl.mode=hardcode", "dnsmos_ovrl.bounds=[3.0, null]"])
    assert settings.named_rules["dnsmos_ovrl"].bounds == (3.0, None)
    assert list(settings.rules(["dnsmos_ovrl", "reconstruction_loss", "snr_db"])) == [
        "dnsmos_ovrl",
        "reconstruction_loss",  # the seed's default median rule
    ]


def test_bad_values_are_named():
    base = {"input": "in", "output": "out"}
    with pytest.raises(ConfigError, match="group_pattern: .*needs exactly one capture group"):
        validate_config(ScoreConfig, {**base, "group_pattern": "patient"})
    with pytest.raises(ConfigError, match="split_pattern: .*not a regular expression"):
        validate_config(ScoreConfig, {**base, "split_pattern": "(["})
    with pytest.raises(ConfigError, match="filter.snr_db: .*hard_low/hard_high"):
        validate_config(ScoreConfig, {**base, "filter": {"snr_db": {"mode": "hardcode", "hard_low": 1}}})
    with pytest.raises(ConfigError, match="filter names reconstruction_loss"):  # the name first: no such score
        validate_config(ScoreConfig, {**base, "filter": {"reconstruction_loss": {"mode": "hardcode", "hard_low": 1}}})
    with pytest.raises(ConfigError, match="filter names dnsmos_ovr, which the scores do not have"):
        validate_config(ScoreConfig, {**base, "filter": {"dnsmos_ovr": {"mode": "none"}}})
    with pytest.raises(ConfigError) as said:  # a score's name mistyped in a dotted --set, not a rule without a mode
        load_config(ScoreConfig, "score", ["input=in", "output=out", "filter.speech_fractio.bounds=[0.1, null]"])
    assert "filter names speech_fractio, which the scores do not have" in str(said.value)
    assert "speech_fractio: did you mean speech_fraction?" in str(said.value) and "mode" not in str(said.value)
    with pytest.raises(ConfigError, match="filter.1: Keys should be strings"):  # YAML's `1:`, not a TypeError
        validate_config(ScoreConfig, {**base, "filter": {1: {"mode": "median"}}})
    with pytest.raises(ConfigError, match="filter names reconstruction_loss"):  # not a column of the default set
        validate_config(ScoreConfig, {**base, "filter": {"reconstruction_loss": {"mode": "none"}}})
    with pytest.raises(ConfigError, match="filter names bogus"):
        validate_config(ScoreConfig, {**base, "filter": {"scatter": ["snr_db", "bogus"]}})
    with pytest.raises(ConfigError) as said:  # the way out is named: a packaged config with fewer scorers
        load_config(ScoreConfig, "score", ["input=in", "output=out", "scorers=[signal]"])
    assert str(said.value).endswith(
        "add the scorers that give them, or take them out of the filter section "
        "(--set filter.dnsmos_ovrl=null --set filter.speech_fraction=null --set filter.scatter=null)"
    )
    taken_out = ["filter.dnsmos_ovrl=null", "filter.speech_fraction=null", "filter.scatter=null"]
    config = load_config(ScoreConfig, "score", ["input=in", "output=out", "scorers=[signal]", *taken_out])
    assert sorted(config.filter.named_rules) == ["clipping_fraction", "snr_db"] and config.filter.scatter is None
    with pytest.raises(ConfigError, match="scorers dnsmos, signal need audio"):
        validate_config(ScoreConfig, {**base, "source": "pt", "scorers": ["dnsmos", "signal"]})
    with pytest.raises(ConfigError, match="model is set but scorers does not include reconstruction"):
        validate_config(ScoreConfig, {**base, "model": {"kind": "reference", "seed": 3}})
    with pytest.raises(ConfigError, match="scorers: each at most once"):
        validate_config(ScoreConfig, {**base, "scorers": ["vad", "vad"]})
    with pytest.raises(ConfigError, match="scorers.0"):
        validate_config(ScoreConfig, {**base, "scorers": ["utmos"]})
    with pytest.raises(ConfigError, match="side 'lower' drops the bound"):
        validate_config(
            ScoreConfig, {**base, "filter": {"snr_db": {"mode": "median", "side": "lower", "hard_high": 5}}}
        )
    with pytest.raises(ConfigError, match="source shards takes one input"):
        validate_config(ScoreConfig, {**base, "input": ["a", "b"], "source": "shards"})
    with pytest.raises(ConfigError, match="mask_ratio"):
        validate_config(ScoreConfig, {**base, "mask_ratio": 1.0})
    # the spectrogram's settings where the job computes one (a model's loss on audio), not a tensor's shape
    coarse = {**base, "scorers": ["reconstruction"], "sample_rate": 44100, "n_fft": 512}
    with pytest.raises(ConfigError, match=r"n_mels \(128\) is more mel bands than n_fft 512 resolves"):
        validate_config(ScoreConfig, coarse)
    assert validate_config(ScoreConfig, {**coarse, "source": "pt"}).n_mels == 128
    with pytest.raises(ConfigError, match=r"f_min \(9000.0\) must be below f_max \(8000.0\)"):
        validate_config(ScoreConfig, {**coarse, "n_fft": 2048, "f_min": 9000, "f_max": 8000})


def test_filter_settings_do_not_change_the_fingerprint_but_scoring_settings_do():
    base = validate_config(ScoreConfig, {"input": "in", "output": "out"})
    refiltered = validate_config(ScoreConfig, {"input": "in", "output": "out", "filter": {"snr_db": {"mode": "none"}}})
    rescored = validate_config(ScoreConfig, {"input": "in", "output": "out", "signal": {"clip_level": 0.9}})
    assert base.fingerprint() == refiltered.fingerprint() != rescored.fingerprint()


def test_the_fingerprint_names_the_scorers_and_digests_their_model_files():
    from ray_pipelines.jobs.score import JOB

    extra = JOB(validate_config(ScoreConfig, {"input": "in", "output": "out"})).fingerprint_extra()
    assert extra["scorers"] == ["dnsmos", "vad", "signal"]
    assert sorted(extra["model_files_sha256"]) == [
        "silero_vad/data/silero_vad.jit",
        "speechmos/dnsmos_models/model_v8.onnx",
        "speechmos/dnsmos_models/sig_bak_ovr.onnx",
        "speechmos/pdnsmos_models/sig_bak_ovr.onnx",
    ]
    assert all(len(digest) == 64 for digest in extra["model_files_sha256"].values())
    assert "model_weights_sha256" not in extra  # no reconstruction scorer, no user model loaded


def test_path_labels_from_patterns_and_hash_splits():
    labels = PathLabels(r"^([^/]+)/", r"^[^/]+/([^/]+)/", r"/(patient\d+)_")
    assert labels.of("train/good/patient7_1.pt") == ({"split": "train", "class": "good", "group": "patient7"}, "")
    assert labels.of("loose.pt")[1].startswith("no split")
    assert labels.of("val/x.pt")[0] == {"split": "val", "class": "", "group": ""}
    hashed = PathLabels(None, None, None, seed=0, val_fraction=0.5)
    splits = {hashed.of(f"{i}.wav")[0]["split"] for i in range(50)}
    assert splits == {"train", "val"}
    assert hashed.of("x.wav", shard_split=None) == hashed.of("x.wav")
    assert PathLabels(None, None, None).of("x.wav", shard_split="test")[0]["split"] == "test"


def test_a_mistyped_filter_setting_is_told_the_setting_it_is_close_to():
    """``--set trainsplit=val`` was told as a rule for a score ``trainsplit`` (or as a rule that is not a mapping)."""
    with pytest.raises(ConfigError, match=r"^trainsplit: unknown key; did you mean train_split\?$"):
        load_filter_settings(None, ["trainsplit=val"])
    with pytest.raises(ConfigError, match=r"^histogram_bin: unknown key; did you mean histogram_bins\?$"):
        load_filter_settings(None, ["histogram_bin=20"], scores=["snr_db"])
    base = {"input": "in", "output": "out", "scorers": ["signal"]}
    with pytest.raises(ConfigError, match=r"filter\.trainsplit: unknown key; did you mean filter\.train_split\?"):
        validate_config(ScoreConfig, {**base, "filter": {"trainsplit": "val"}})


def test_a_null_filter_rule_takes_the_reconstruction_scores_default_out_in_the_job_and_the_tool():
    config = load_config(ScoreConfig, "score-mae", ["input=in", "output=out", "filter.signal_energy=null"])
    assert list(config.filter.rules(config.score_columns)) == ["reconstruction_loss"]
    # the filter tool rerunning with the rules the job recorded (manifest.json) leaves it out too
    recorded = config.filter.model_dump(mode="json")
    assert recorded["signal_energy"] is None
    again = load_filter_settings(None, [], base=recorded, scores=list(config.score_columns))
    assert list(again.rules(config.score_columns)) == ["reconstruction_loss"]
