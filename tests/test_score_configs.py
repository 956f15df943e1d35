"""The score configs: shipped examples validate, bad values are named, filters stay out of the fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipelines.config import ConfigError, load_config, validate_config
from ray_pipelines.jobs.filter import load_filter_settings
from ray_pipelines.jobs.score import ScoreConfig
from ray_pipelines.scoring.inputs import PathLabels

CONFIGS = Path(__file__).resolve().parents[1] / "ray_pipelines" / "configs"


@pytest.mark.parametrize("name", ["score.yaml", "score-pt.yaml", "score-shards.yaml"])
def test_example_configs_validate(name):
    config = load_config(ScoreConfig, CONFIGS / name)
    assert config.mel_frames == 130
    assert load_filter_settings(str(CONFIGS / name), []) == config.filter


def test_filter_section_file_and_overrides():
    settings = load_filter_settings(
        str(CONFIGS / "score-filter.yaml"), ["signal_energy.mode=percentile", "signal_energy.upper_quantile=0.9"]
    )
    assert settings.reconstruction_loss.hard_high == 7.0
    assert (settings.signal_energy.mode, settings.signal_energy.upper_quantile) == ("percentile", 0.9)
    with pytest.raises(ConfigError, match="signal_energy.mode"):
        load_filter_settings(None, ["signal_energy.mode=iqr"])


def test_bad_values_are_named():
    base = {"input": "in", "output": "out"}
    with pytest.raises(ConfigError, match="group_pattern: .*needs exactly one capture group"):
        validate_config(ScoreConfig, {**base, "group_pattern": "patient"})
    with pytest.raises(ConfigError, match="split_pattern: .*not a regular expression"):
        validate_config(ScoreConfig, {**base, "split_pattern": "(["})
    with pytest.raises(ConfigError, match="filter.reconstruction_loss: .*hard_low/hard_high"):
        validate_config(ScoreConfig, {**base, "filter": {"reconstruction_loss": {"mode": "hardcode", "hard_low": 1}}})
    with pytest.raises(ConfigError, match="source shards takes one input"):
        validate_config(ScoreConfig, {**base, "input": ["a", "b"], "source": "shards"})
    with pytest.raises(ConfigError, match="mask_ratio"):
        validate_config(ScoreConfig, {**base, "mask_ratio": 1.0})


def test_filter_settings_do_not_change_the_fingerprint_but_scoring_settings_do():
    base = validate_config(ScoreConfig, {"input": "in", "output": "out"})
    refiltered = validate_config(
        ScoreConfig, {"input": "in", "output": "out", "filter": {"signal_energy": {"mode": "none"}}}
    )
    rescored = validate_config(ScoreConfig, {"input": "in", "output": "out", "mask_ratio": 0.5})
    assert base.fingerprint() == refiltered.fingerprint() != rescored.fingerprint()


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
