"""The score job's checks of settings that failed every row or read nothing true, and the two scores whose
numbers were wrong on some clips (bandwidth of short clips, DNSMOS of long ones). No Ray."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as scipy_signal

from ray_pipelines.config import ConfigError, load_config, validate_config
from ray_pipelines.jobs.filter import load_filter_settings
from ray_pipelines.jobs.score import JOB, ScoreConfig
from ray_pipelines.scoring.filters import FilterRule
from ray_pipelines.scoring.report import FilterSettings, write_filter_outputs
from ray_pipelines.scoring.signal_stats import effective_bandwidth, signal_statistics
from ray_pipelines.scoring.table import ScoreTable
from ray_pipelines.storage import Storage

BASE = {"input": "in", "output": "out"}
RATE = 16000


def test_frames_on_audio_input_is_the_windows_log_mel_or_refused_naming_the_one_that_fits():
    # score-pt.yaml's frames and masking on 10 s of 16 kHz audio: every row failed (72 vs 160), exit 0
    audio = {**BASE, "scorers": ["reconstruction"], "sample_rate": 16000, "duration": 10.0, "mask_ratio": 0.75}
    with pytest.raises(ConfigError, match=r"frames: 130 does not fit source audio: .* gives 313 mel frames; .*313"):
        validate_config(ScoreConfig, {**audio, "frames": 130})
    assert validate_config(ScoreConfig, audio).mel_frames == 313
    assert validate_config(ScoreConfig, {**audio, "frames": 313}).mel_frames == 313
    with pytest.raises(ConfigError, match="frames: 130 does not fit source audio"):  # unused there, still wrong
        validate_config(ScoreConfig, {**BASE, "sample_rate": 16000, "duration": 10.0, "frames": 130})
    # tensor inputs: frames is their shape, whatever the audio keys say
    tensors = validate_config(
        ScoreConfig, {**BASE, "source": "pt", "sample_rate": 16000, "duration": 10.0, "frames": 130}
    )
    assert tensors.mel_frames == 130
    assert load_config(ScoreConfig, "score-pt").mel_frames == 130


def test_mask_patch_sides_are_at_least_one():
    for patch in ([0, 16], [16, 0], [-1, 16]):
        with pytest.raises(ConfigError, match=r"mask_patch\.[01]: Input should be greater than 0"):
            validate_config(ScoreConfig, {**BASE, "source": "pt", "mask_ratio": 0.5, "mask_patch": patch})
    assert validate_config(ScoreConfig, {**BASE, "source": "pt", "mask_patch": [1, 1]}).mask_patch == (1, 1)
    # the reference model's patch: a 0 divided by zero in every actor too
    with pytest.raises(ConfigError, match=r"model\.patch\.0: Input should be greater than 0"):
        validate_config(ScoreConfig, {**BASE, "source": "pt", "model": {"patch": [0, 16]}})


def test_signal_levels_are_bounded():
    for value in (10.0, 0.5, float("inf")):
        with pytest.raises(ConfigError, match="signal.silence_threshold_db"):
            validate_config(ScoreConfig, {**BASE, "signal": {"silence_threshold_db": value}})
    assert (
        validate_config(ScoreConfig, {**BASE, "signal": {"silence_threshold_db": 0}}).signal.silence_threshold_db == 0
    )
    for value in (0.0, -0.5, 1.01, 2.0):
        with pytest.raises(ConfigError, match="signal.clip_level"):
            validate_config(ScoreConfig, {**BASE, "signal": {"clip_level": value}})
    assert validate_config(ScoreConfig, {**BASE, "signal": {"clip_level": 1.0}}).signal.clip_level == 1.0


def test_a_hardcode_rule_needs_bounds_except_the_reconstruction_scores_documented_default():
    with pytest.raises(ConfigError, match="snr_db: mode hardcode needs bounds"):
        validate_config(ScoreConfig, {**BASE, "filter": {"snr_db": {"mode": "hardcode"}}})
    with pytest.raises(ConfigError, match="dnsmos_ovrl: mode hardcode needs bounds"):  # the filter tool's --set
        load_filter_settings(None, ["dnsmos_ovrl.mode=hardcode"])
    # a rule the job ran with (its manifest holds bounds: null), turned hardcode by --set
    with pytest.raises(ConfigError, match="snr_db: mode hardcode needs bounds"):
        load_filter_settings(None, ["snr_db.mode=hardcode"], base={"snr_db": FilterRule().model_dump(mode="json")})
    open_sided = validate_config(
        ScoreConfig, {**BASE, "filter": {"snr_db": {"mode": "hardcode", "bounds": [10, None]}}}
    )
    assert open_sided.filter.rules(open_sided.score_columns)["snr_db"].bounds == (10, None)
    # the reconstruction scores keep the seed's [1.5, 7.0]
    tensors = validate_config(
        ScoreConfig,
        {**BASE, "source": "pt", "filter": {n: {"mode": "hardcode"} for n in ("reconstruction_loss", "signal_energy")}},
    )
    rules = tensors.filter.rules(tensors.score_columns)
    assert rules["reconstruction_loss"].bounds == rules["signal_energy"].bounds == (1.5, 7.0)


def small_table() -> ScoreTable:
    return ScoreTable.from_columns(
        {"key": ["train/a.wav", "train/b.wav"], "split": ["train", "train"], "group": ["g", "g"], "snr_db": [20.0, 5.0]}
    )


def test_a_predictions_file_that_is_not_there_is_refused_before_anything_is_written(tmp_path):
    missing = tmp_path / "predictions.csv"
    with pytest.raises(ConfigError, match=f"filter.predictions: no such file: {missing}"):
        validate_config(ScoreConfig, {**BASE, "filter": {"predictions": str(missing)}})
    with pytest.raises(ConfigError, match="no such file"):  # the filter tool's own section
        load_filter_settings(None, [f"predictions={missing}"])
    with pytest.raises(ConfigError, match="not a file"):
        validate_config(ScoreConfig, {**BASE, "filter": {"predictions": str(tmp_path)}})
    # a URL: asked before the job writes anything (fingerprint_extra runs before the output is claimed)
    config = validate_config(
        ScoreConfig, {**BASE, "scorers": ["signal"], "filter": {"predictions": "memory://no/p.csv"}}
    )
    with pytest.raises(ConfigError, match="filter.predictions: no such file: memory://no/p.csv"):
        JOB(config).fingerprint_extra()

    # a file gone between the check and the filter run: read before kept.txt is replaced
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("train/a.wav\n")
    settings = FilterSettings().model_copy(update={"predictions": str(missing)})  # (validated when it was there)
    with pytest.raises(FileNotFoundError):
        write_filter_outputs(Storage(str(out)), small_table(), settings)
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    assert (out / "kept.txt").read_text() == "train/a.wav\n"


def band_limited_noise(samples: int, seed: int = 0) -> np.ndarray:
    """White noise through a 12th-order 4 kHz low-pass (at 16 kHz), its start-up transient cut off."""
    sos = scipy_signal.butter(12, 4000, fs=RATE, output="sos")
    noise = scipy_signal.sosfilt(sos, np.random.default_rng(seed).standard_normal(samples + 4000))[4000:]
    return noise - noise.mean()


def test_the_bandwidth_of_a_clip_shorter_than_n_fft_is_measured_on_its_own_samples():
    long = effective_bandwidth(band_limited_noise(RATE), RATE)
    assert 4000 < long < 6000  # the filter's skirt reaches -60 dB at about 5.3 kHz
    for samples in (800, 200, 1023):  # 800: min_duration 0.05 s at 16 kHz; read 8000 Hz on the zero padding
        short = effective_bandwidth(band_limited_noise(samples, seed=samples), RATE)
        assert abs(short - long) < 500, samples
    assert signal_statistics(band_limited_noise(800), RATE)["bandwidth_hz"] < 6000
    # a clip of n_fft samples or more: the frames as before (1024 samples is exactly one frame)
    clip = band_limited_noise(1024)
    power = np.abs(np.fft.rfft(clip * np.hanning(1024))) ** 2
    assert effective_bandwidth(clip, RATE) == np.flatnonzero(power >= power.max() * 1e-6).max() * RATE / 1024
    assert effective_bandwidth(np.zeros(100), RATE) == 0.0


def test_outputs_whose_short_clips_or_long_windows_now_score_otherwise_are_refused_not_mixed():
    def extra(**config):
        return JOB(validate_config(ScoreConfig, {**BASE, **config})).fingerprint_extra()

    # the packaged defaults: min_duration 0.5 s at 16 kHz, 0.05 s at 22.05 kHz (1102 samples), 10 s: unchanged
    assert "bandwidth_short_clips" not in extra(scorers=["signal"], sample_rate=16000, min_duration=0.5)
    assert "bandwidth_short_clips" not in extra(scorers=["signal"])
    assert extra(scorers=["signal"], sample_rate=16000)["bandwidth_short_clips"] is True  # 800 samples
    assert extra(scorers=["signal"], signal={"n_fft": 4096})["bandwidth_short_clips"] is True
    assert "bandwidth_short_clips" not in extra(scorers=["vad"], sample_rate=16000)
    assert "dnsmos_every_segment" not in extra(scorers=["dnsmos"], duration=16.99)
    assert extra(scorers=["dnsmos"], duration=17.0)["dnsmos_every_segment"] is True
    assert extra(scorers=["dnsmos"], duration=30.0)["dnsmos_every_segment"] is True
    assert "dnsmos_every_segment" not in extra(scorers=["signal"], duration=30.0)


def speechmos_segments(audio: np.ndarray) -> list[np.ndarray]:
    """speechmos.dnsmos.DNSMOS.__call__'s segmentation (0.0.1.1), as it is."""
    length = int(9.01 * RATE)
    while len(audio) < length:
        audio = np.append(audio, audio)
    out = []
    for idx in range(int(np.floor(len(audio) / RATE) - 9.01) + 1):
        segment = audio[int(idx * RATE) : int((idx + 9.01) * RATE)]
        if len(segment) < length:
            continue
        out.append(segment.astype(np.float32))
    return out


def test_dnsmos_scores_every_segment_of_a_long_clip_and_speechmos_segments_up_to_16_s():
    from ray_pipelines.scoring.dnsmos import segments

    # speechmos's float arithmetic: segments starting at 7 to 23 s are one sample short, and dropped
    assert len(speechmos_segments(np.zeros(30 * RATE))) == 7
    clip = np.random.default_rng(0).standard_normal(30 * RATE)
    mine = segments(clip)
    assert len(mine) == 21
    assert all(np.array_equal(s, clip[i * RATE : i * RATE + 144160].astype(np.float32)) for i, s in enumerate(mine))
    # up to 16 s, and every clip repeated to reach 9.01 s: exactly speechmos's segments
    for seconds in (0.3, 3.0, 4.3, 4.5, 8.6, 9.0, 9.01, 10.0, 12.5, 15.99, 16.0, 16.99):
        audio = clip[: int(round(seconds * RATE))]
        theirs, ours = speechmos_segments(audio), segments(audio)
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)), seconds


def test_a_model_check_killed_in_its_child_process_exits_1_not_as_a_config_error(tmp_path):
    """The driver's model check runs in a child process; one killed there (out of memory) was reported as a
    config error, exit 2, which a scheduler reads as 'fix the config' rather than 'retry later'."""
    import subprocess
    import sys

    from tests.audio_helpers import tone, write_audio

    write_audio(tmp_path / "in" / "a.wav", tone(1.0, RATE), RATE)
    (tmp_path / "killed.py").write_text("import os\n\n\ndef build():\n    os._exit(137)  # as the OOM killer\n")
    settings = {
        "input": tmp_path / "in",
        "output": tmp_path / "out",
        "scorers": '["reconstruction"]',
        "sample_rate": RATE,
        "model.kind": "factory",
        "model.factory": f"{tmp_path / 'killed.py'}:build",
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run(
        [sys.executable, "-m", "ray_pipelines.cli", "score", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "without a reply" in result.stderr and not (tmp_path / "out" / "_SUCCESS").exists()


def test_an_older_outputs_recorded_rules_do_not_lend_their_old_default_bounds_to_a_new_hardcode_rule():
    """Score outputs written before the bounds had no default recorded every rule with [1.5, 7.0]: the filter
    tool's --set snr_db.mode=hardcode on one kept SNRs of 1.5 to 7 dB, the refusal never came."""
    from ray_pipelines.jobs.filter import without_unused_bounds

    recorded = {
        "train_split": "train",
        "snr_db": {"mode": "median", "k": 1.5, "bounds": [1.5, 7.0]},
        "clipping_fraction": {"mode": "hardcode", "bounds": [None, 0.001]},
    }
    base = without_unused_bounds(recorded)
    assert base["snr_db"] == {"mode": "median", "k": 1.5} and base["clipping_fraction"] == recorded["clipping_fraction"]
    with pytest.raises(ConfigError, match="snr_db: mode hardcode needs bounds"):
        load_filter_settings(None, ["snr_db.mode=hardcode"], base=base)
    kept = load_filter_settings(None, ["snr_db.mode=hardcode", "snr_db.bounds=[3.0, null]"], base=base)
    assert kept.named_rules["snr_db"].bounds == (3.0, None)
    assert without_unused_bounds(None) is None
