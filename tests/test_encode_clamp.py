"""``clamp``: the audio clamped to [-1, 1] before the model, as stable-audio-tools' pre_encode does; off by
default, and then left out of the config fingerprint so outputs written before the key keep theirs."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from tests.test_encode_job import samples
from tests.test_encode_units import SMALL_BUILTIN

SAMPLE_SIZE = 4096


def encode_config(input_dir, output, **overrides) -> EncodeConfig:
    return validate_config(
        EncodeConfig,
        {
            "input": str(input_dir),
            "output": str(output),
            "model": SMALL_BUILTIN,
            "sample_size": SAMPLE_SIZE,
            "sample_posterior": False,  # the posterior's noise is drawn per key: the mean compares two files
            "actors": 1,
            **overrides,
        },
    )


def test_clamp_encodes_a_hot_float_wav_as_its_clamped_audio(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_SIZE) / 44100
    audio = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    audio = (audio + 0.1 * rng.standard_normal(audio.shape)) * (1.4 / np.abs(audio).max())
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "hot.wav", audio.astype(np.float32), 44100, subtype="FLOAT")  # a hot float master
    sf.write(inputs / "clipped.wav", np.clip(audio, -1, 1).astype(np.float32), 44100, subtype="FLOAT")
    assert np.abs(sf.read(inputs / "hot.wav")[0]).max() > 1.39

    for name, clamp in (("clamped", True), ("unclamped", False)):
        result = run_job(EncodeJob(encode_config(inputs, tmp_path / name, clamp=clamp)), progress=False)
        assert result.manifest["counts"]["rows_written"] == 2 and result.manifest["counts"]["errors"] == 0
    clamped, unclamped = samples(tmp_path / "clamped"), samples(tmp_path / "unclamped")

    hot, clipped = clamped[("hot.wav", 0)][0], clamped[("clipped.wav", 0)][0]
    assert hot.tobytes() == clipped.tobytes()  # the hot file is encoded as its clamped audio
    assert not np.array_equal(unclamped[("hot.wav", 0)][0], hot)  # without clamp the model sees the peaks
    assert unclamped[("clipped.wav", 0)][0].tobytes() == clipped.tobytes()  # audio within [-1, 1] is unchanged


# The fingerprint this config had at 1b120b7, before the clamp key existed (computed with that commit's code).
FINGERPRINT_BEFORE_CLAMP = "f706668267be9081598aa1d7b4141127e3711bf20567400b5a632e2c69508329"


def test_clamp_false_keeps_the_fingerprint_outputs_written_before_the_key_have():
    default = encode_config("in", "out")
    assert default.fingerprint() == FINGERPRINT_BEFORE_CLAMP
    assert "clamp" not in default.fingerprinted()
    assert encode_config("in", "out", clamp=False).fingerprint() == default.fingerprint()
    clamped = encode_config("in", "out", clamp=True)
    assert clamped.fingerprinted()["clamp"] is True and clamped.fingerprint() != default.fingerprint()
