"""The pretrained scorers (DNSMOS, Silero VAD) on real recordings, and the stage around them (no Ray).

The models load from the installed wheels; a test blocks the network while they load.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import soxr
import torch

from ray_pipelines.scoring.scorers import Clips
from ray_pipelines.stages.score import ScoreStage
from tests import score_audio

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
RATE = score_audio.SPEECH_RATE


def batch_of(waves: list[np.ndarray], window: int | None = None) -> dict[str, np.ndarray]:
    """A decoded batch as the engine hands it over: zero-padded windows plus each row's real length."""
    window = window or max(len(w) for w in waves)
    audio = np.zeros((len(waves), window), dtype=np.float32)
    for i, wave in enumerate(waves):
        audio[i, : len(wave)] = wave[:window]
    return {
        "key": np.array([f"clip{i}" for i in range(len(waves))], dtype=object),
        "item": np.zeros(len(waves), dtype=np.int64),
        "error": np.array([""] * len(waves), dtype=object),
        "audio": audio,
        "valid": np.array([min(len(w), window) for w in waves]),
    }


@pytest.fixture(scope="module")
def recordings():
    speech = score_audio.clean_speech()
    loop, rate = score_audio.music()
    return {
        "clean": speech,
        "noisy": score_audio.with_noise(speech, snr_db=0.0),
        "music": soxr.resample(loop, rate, RATE)[: 10 * RATE].astype(np.float32),
    }


@pytest.fixture(scope="module")
def stage():
    """The default scorers, built with every network connection refused: nothing is downloaded."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        return ScoreStage(scorers={"dnsmos": {}, "vad": {}, "signal": {}}, sample_rate=RATE)
    finally:
        socket.socket.connect = original


@pytest.fixture(scope="module")
def scored(stage, recordings):
    return stage(batch_of(list(recordings.values())))


def test_dnsmos_orders_clean_and_noisy_speech_and_equals_speechmos(scored, recordings):
    from speechmos import dnsmos

    clean, noisy = 0, 1
    assert scored["dnsmos_bak"][clean] > scored["dnsmos_bak"][noisy] + 1.0  # background: 3.6 against 1.4
    assert scored["dnsmos_ovrl"][clean] > scored["dnsmos_ovrl"][noisy] + 1.0
    assert all(1.0 <= scored[c][clean] <= 5.0 for c in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"))
    # speechmos on the same samples (its sessions use every core: ONNX Runtime's thread count can move the last bit)
    reference = dnsmos.run(recordings["clean"], RATE)
    for column, name in (("dnsmos_sig", "sig_mos"), ("dnsmos_bak", "bak_mos"), ("dnsmos_ovrl", "ovrl_mos")):
        assert scored[column][clean] == pytest.approx(reference[name], rel=1e-6)
    assert scored["dnsmos_p808"][clean] == pytest.approx(float(reference["p808_mos"]), rel=1e-6)


def test_speech_fraction_separates_speech_from_music_and_equals_silero_per_file(scored, recordings):
    from silero_vad import get_speech_timestamps, load_silero_vad

    fraction = scored["speech_fraction"]
    assert fraction[0] > 0.7 and fraction[1] > 0.5 and fraction[2] < 0.05  # clean, noisy speech; tabla
    model = load_silero_vad()
    for i, wave in enumerate(recordings.values()):
        segments = get_speech_timestamps(torch.from_numpy(wave), model, sampling_rate=RATE)
        assert fraction[i] == pytest.approx(sum(s["end"] - s["start"] for s in segments) / len(wave), abs=1e-3)


def test_a_clips_scores_do_not_depend_on_its_batch_or_its_padding(stage, scored, recordings):
    alone = stage(batch_of([recordings["noisy"]], window=12 * RATE))  # alone, in a longer zero-padded window
    for column in stage.columns:
        assert alone[column][0] == scored[column][1], column  # bitwise


def test_the_stage_turns_a_clip_a_scorer_fails_on_into_an_error_row(stage, recordings):
    batch = batch_of([recordings["clean"][: RATE // 2], np.zeros(0, np.float32), recordings["music"][:RATE]])
    batch["error"][2] = "undecodable: not audio"  # failed upstream: passed through untouched
    out = stage(batch)
    assert out["error"].tolist() == ["", "score failed: dnsmos: ValueError: empty clip", "undecodable: not audio"]
    assert np.isfinite([out[c][0] for c in stage.columns]).all()  # the other clip keeps every score
    assert "audio" not in out and "valid" not in out


def test_scorers_that_need_audio_say_so_on_spectrogram_rows():
    from ray_pipelines.scoring.vad import SpeechScorer

    clips = Clips(keys=["a"], items=[0], mel=np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="needs audio"):
        SpeechScorer()(clips)
