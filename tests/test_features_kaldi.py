"""AST features: parity with transformers.ASTFeatureExtractor and torchaudio's Kaldi fbank
on real recordings, padding of short audio, and the stage around them (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_pipelines.audio.decode import AudioFile, InputAudio, load_window
from ray_pipelines.features.kaldi import AST_MEAN, AST_STD, ASTFeatures, kaldi_mel_banks, num_frames
from ray_pipelines.stages.features import FeaturesStage
from tests.audio_helpers import SHARED_AUDIO

transformers = pytest.importorskip("transformers")
SONIC_PI = SHARED_AUDIO / "sonic-pi"
# Real recordings: a long loop, a stereo drone, a mono tabla stroke (shorter than a snippet).
REAL = ["loop/loop_amen_full.flac", "ambient/ambi_glass_hum.flac", "tabla/tabla_na.flac"]


def real_audio(relpath: str, seconds: float = 10.24, start: float = 0.0) -> tuple[np.ndarray, int]:
    """A 16 kHz mono window of a real recording as the job's decoder produces it, and its real length."""
    path = SONIC_PI / relpath
    if not path.exists():
        pytest.skip(f"real recordings not found at {path}")
    with AudioFile(InputAudio(str(path))) as audio_file:
        return load_window(audio_file, start, seconds, 16000)


def extractor(**kwargs):
    return transformers.ASTFeatureExtractor(**kwargs)


def reference(audio: np.ndarray, **kwargs) -> np.ndarray:
    out = extractor(**kwargs)(audio, sampling_rate=16000, return_tensors="np")["input_values"]
    return np.asarray(out[0], dtype=np.float32)


@pytest.mark.parametrize("relpath", REAL)
def test_matches_ast_feature_extractor_on_real_audio(relpath):
    audio, valid = real_audio(relpath)
    ours = ASTFeatures()(torch.from_numpy(audio), valid).numpy()
    expected = reference(audio[:valid])  # the extractor sees the real audio, unpadded
    assert ours.shape == expected.shape == (1024, 128)
    assert np.abs(ours - expected).max() < 1e-5
    assert np.isfinite(ours).all() and ours.std() > 0.05  # real content, not padding only


@pytest.mark.parametrize(
    "options",
    [
        dict(num_mel_bins=64, max_length=512),
        dict(num_mel_bins=128, max_length=300),  # crops the 1022 frames
        dict(num_mel_bins=40, max_length=1024, do_normalize=False),
        dict(mean=-3.0, std=2.5),
    ],
)
def test_options_match_the_extractor(options):
    audio, valid = real_audio(REAL[0])
    ours = ASTFeatures(
        n_mels=options.get("num_mel_bins", 128),
        max_length=options.get("max_length", 1024),
        normalize=options.get("do_normalize", True),
        mean=options.get("mean", AST_MEAN),
        std=options.get("std", AST_STD),
    )(torch.from_numpy(audio), valid).numpy()
    expected = reference(audio[:valid], **options)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-5


def test_normalisation_is_the_ast_formula():
    audio, valid = real_audio(REAL[1])
    wave = torch.from_numpy(audio)
    raw = ASTFeatures(normalize=False)(wave, valid)
    normed = ASTFeatures()(wave, valid)
    torch.testing.assert_close(normed, (raw - (-4.2677393)) / (2 * 4.5689974), rtol=0, atol=1e-6)


def test_unpadded_fbank_matches_torchaudio_kaldi():
    import torchaudio.compliance.kaldi as kaldi

    audio, _ = real_audio(REAL[0], seconds=3.0, start=1.0)
    wave = torch.from_numpy(audio)
    expected = kaldi.fbank(wave[None], sample_frequency=16000, window_type="hanning", num_mel_bins=128, dither=0.0)
    ours = ASTFeatures().fbank(wave)
    assert ours.shape == expected.shape == (298, 128)
    assert (ours - expected).abs().max() < 1e-4  # natural-log units, before normalisation


@pytest.mark.parametrize("bins", [23, 64, 128])
def test_mel_banks_are_kaldis(bins):
    import torchaudio.compliance.kaldi as kaldi

    expected, _ = kaldi.get_mel_banks(bins, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(bins, 512, 16000.0)
    assert ours.shape == (bins, 257)
    assert torch.equal(ours[:, :256], expected) and not ours[:, 256].any()


def test_short_audio_is_featurised_then_padded_with_zero_frames():
    audio, valid = real_audio(REAL[2])  # tabla_na: 0.72 s
    assert valid < len(audio) and not audio[valid:].any()
    raw = ASTFeatures(normalize=False)(torch.from_numpy(audio), valid).numpy()
    frames = num_frames(valid, 400, 160)
    assert frames == 1 + (valid - 400) // 160 and num_frames(399, 400, 160) == 0
    assert raw[:frames].std() > 0 and not raw[frames:].any()  # the extractor pads with 0 before normalising
    padded_audio = ASTFeatures(normalize=False)(torch.from_numpy(audio)).numpy()
    assert not np.allclose(padded_audio, raw)  # featurising the zero-padded audio would differ


def test_audio_shorter_than_one_frame_gives_padding_only():
    out = ASTFeatures(max_length=16)(torch.full((300,), 0.1), 300).numpy()
    assert out.shape == (16, 128)
    np.testing.assert_allclose(out, (0 - AST_MEAN) / (2 * AST_STD), rtol=1e-6)


def test_batched_rows_equal_single_rows():
    audio, _ = real_audio(REAL[0])
    batch = torch.from_numpy(np.stack([audio, audio[::-1].copy(), 0.5 * audio]))
    module = ASTFeatures(max_length=256)
    together = module(batch)
    for i in range(3):
        assert torch.allclose(together[i], module(batch[i]), atol=1e-5)


def test_stage_rows_error_rows_and_batch_independence():
    audio, valid = real_audio(REAL[0], seconds=2.0)
    short, short_valid = real_audio(REAL[2], seconds=2.0)
    stage = FeaturesStage(n_mels=64, max_length=128)
    batch = {
        "audio": np.stack([audio, short, np.zeros_like(audio)]),
        "valid_samples": np.array([valid, short_valid, 0]),
        "error": np.array(["", "", "undecodable: test"], dtype=object),
        "key": np.array(["a", "b", "c"], dtype=object),
    }
    out = stage(dict(batch))
    assert "audio" not in out and "valid_samples" not in out
    values = out["input_values"]
    assert values.shape == (3, 128, 64) and values.dtype == np.float32
    assert not values[2].any()  # error row: zeros, dropped by the sink
    expected = reference(short[:short_valid], num_mel_bins=64, max_length=128)
    assert np.abs(values[1] - expected).max() < 1e-5
    alone = stage({k: v[:1] for k, v in batch.items()})["input_values"][0]
    assert np.array_equal(alone, values[0])  # same bytes whatever shares the batch
    huge = {**batch, "audio": batch["audio"] * np.array([[1.0], [1e20], [1.0]], dtype=np.float32)}
    out = stage(huge)  # finite samples whose fbank overflows: an error row, not inf features
    assert (out["error"][0], out["error"][2]) == ("", "undecodable: test") and np.isfinite(out["input_values"][0]).all()
    assert out["error"][1].startswith("non-finite spectrogram: the audio's peak is ")
    # a snippet with less than one 25 ms frame of audio (the seed rule's last of a 0.1 s song): an error row,
    # not a row of padding alone
    tail = stage({**batch, "valid_samples": np.array([valid, 399, 0])})
    assert list(tail["error"]) == [
        "",
        "too short: 399 samples of audio in the snippet, under one 25 ms frame (400)",
        "undecodable: test",
    ]
    assert np.array_equal(tail["input_values"][0], values[0]) and not tail["input_values"][1].any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    audio, valid = real_audio(REAL[0])
    batch = {
        "audio": np.stack([audio, audio]),
        "valid_samples": np.array([valid, valid // 2]),
        "error": np.array(["", ""], dtype=object),
    }
    cpu = FeaturesStage(device="cpu")(dict(batch))["input_values"]
    gpu = FeaturesStage(device="cuda")(dict(batch))["input_values"]
    assert np.abs(cpu - gpu).max() < 1e-4
