"""Augmentation functions and the pool: exact values on known signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_pipelines.augment import functional as F
from ray_pipelines.augment.params import SPECTROGRAM_ORDER, WAVEFORM_ORDER, ViewDraws, ViewParams, pack_views
from ray_pipelines.augment.pool import AugmentationPool, SpectrogramPoolConfig, WaveformPoolConfig
from ray_pipelines.config import validate_config
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.seeding import derive_seed, sample_rng
from ray_pipelines.spectrogram import LogMelSpectrogram
from ray_pipelines.splits import assign_split, train_val_split
from ray_pipelines.stages.augment import DRAWS_COLUMN, AugmentStage


def test_gain_polarity_shift_are_exact():
    x = torch.arange(8, dtype=torch.float32).repeat(2, 1)
    torch.testing.assert_close(F.gain(x, torch.tensor([20.0, -20.0])), torch.stack([x[0] * 10, x[1] / 10]))
    torch.testing.assert_close(F.polarity(x, torch.tensor([-1.0, 1.0])), torch.stack([-x[0], x[1]]))
    shifted = F.time_shift(x, torch.tensor([2, -1]))
    assert shifted[0].tolist() == [6, 7, 0, 1, 2, 3, 4, 5] and shifted[1].tolist() == [1, 2, 3, 4, 5, 6, 7, 0]


def test_noise_hits_the_requested_snr():
    g = torch.Generator().manual_seed(0)
    x = torch.sin(torch.linspace(0, 200, 8000)).repeat(2, 1)
    noise = torch.randn(2, 8000, generator=g)
    out = F.add_noise(x, noise, torch.tensor([10.0, 30.0]))
    snr = 10 * torch.log10(x.pow(2).mean(-1) / (out - x).pow(2).mean(-1))
    torch.testing.assert_close(snr, torch.tensor([10.0, 30.0]), atol=1e-3, rtol=0)


def test_a_quiet_short_clip_gets_noise_at_its_snr_and_only_an_all_zero_crop_at_full_scale():
    """A 0.05 s clip peaking at -80 dBFS (above silence_db -90) padded to 3 s has a crop power of -100.8 dB:
    it was taken for silent and got noise 40 dB below full scale, an SNR of -60.8 dB (pure noise), where the
    same clip 2 dB louder got exactly the 40 dB asked."""
    sr, n = 22050, 66150
    t = torch.arange(int(0.05 * sr)) / sr
    crops = torch.zeros(3, n, dtype=torch.float64)
    crops[0, : len(t)] = 10 ** (-80 / 20) * torch.sin(2 * math.pi * 1000 * t)
    crops[1, : len(t)] = 10 ** (-78 / 20) * torch.sin(2 * math.pi * 1000 * t)  # crops[2]: all zero
    crops = crops.float()
    noise = torch.randn(3, n, generator=torch.Generator().manual_seed(7))
    out = F.add_noise(crops, noise, torch.tensor([40.0, 40.0, 40.0]))
    signal_db = 10 * torch.log10(crops[:2].double().pow(2).mean(-1))
    noise_db = 10 * torch.log10((out - crops).double().pow(2).mean(-1))
    torch.testing.assert_close(signal_db, torch.tensor([-100.79, -98.79], dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(
        signal_db - noise_db[:2], torch.tensor([40.0, 40.0], dtype=torch.float64), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(noise_db[2], torch.tensor(-40.0, dtype=torch.float64), atol=1e-3, rtol=0)


def _tone_power(freq: float, sr: int = 22050, seconds: float = 1.0) -> tuple[torch.Tensor, LogMelSpectrogram]:
    mel = LogMelSpectrogram(sr, n_fft=2048, hop_length=512, n_mels=64)
    t = torch.arange(int(sr * seconds)) / sr
    return mel.power(torch.sin(2 * math.pi * freq * t)[None]), mel


def test_pitch_shift_moves_the_peak_by_the_semitone_factor():
    power, mel = _tone_power(1000.0)
    shifted = F.pitch_shift(power, torch.tensor([12.0]))
    freqs = mel.frequencies()
    peak = freqs[shifted[0].mean(-1).argmax()]
    assert abs(float(peak) - 2000.0) < 2 * 22050 / 2048
    same = F.pitch_shift(power, torch.tensor([0.0]))
    torch.testing.assert_close(same, power)


def test_time_stretch_compresses_time_and_pads_with_silence():
    power = torch.zeros(1, 5, 40)
    power[0, :, 20] = 1.0  # an onset at frame 20
    faster = F.time_stretch(power, torch.tensor([2.0]))
    assert int(faster[0, 0].argmax()) == 10  # comes twice as early
    assert faster[0, :, 21:].abs().max() == 0  # past the input: silence
    torch.testing.assert_close(F.time_stretch(power, torch.tensor([1.0])), power)


def test_butterworth_is_minus_3db_at_cutoff():
    freqs = torch.tensor([0.0, 1000.0, 8000.0])
    low = F.butterworth_response(freqs, torch.tensor([1000.0]), 4, highpass=False)[0]
    high = F.butterworth_response(freqs, torch.tensor([1000.0]), 4, highpass=True)[0]
    torch.testing.assert_close(low[1], torch.tensor(1 / math.sqrt(2)))
    torch.testing.assert_close(high[1], torch.tensor(1 / math.sqrt(2)))
    assert low[0] == 1.0 and low[2] < 1e-3 and high[0] < 1e-6 and high[2] > 0.999


def test_masks_fill_exactly_the_band():
    spec = torch.zeros(2, 6, 5)
    out = F.mask_along_axis(spec, torch.tensor([1, 0]), torch.tensor([2, 0]), torch.tensor([7.0, 7.0]), axis=1)
    assert out[0, 1:3].eq(7).all() and out[0, [0, 3, 4, 5]].eq(0).all() and out[1].eq(0).all()


def make_pool(**kw) -> AugmentationPool:
    args = dict(
        num_waveform_augs=3, num_spectrogram_augs=2, sample_rate=22050, num_samples=66150, n_mels=128, frames=130
    )
    args.update(kw)
    return AugmentationPool(WaveformPoolConfig(), SpectrogramPoolConfig(), **args)


def test_pool_draws_are_deterministic_and_within_ranges():
    pool = make_pool()
    a = pool.draw(sample_rng(7, "clip.wav", 3, 1))
    b = pool.draw(sample_rng(7, "clip.wav", 3, 1))
    c = pool.draw(sample_rng(7, "clip.wav", 3, 2))
    assert a == b and a != c
    assert len(a.waveform) == 3 and len(set(a.waveform)) == 3 and set(a.spectrogram) == {"frequency_mask", "time_mask"}
    for seed in range(200):
        p = pool.draw(sample_rng(seed, "k", 0, 1))
        assert -6 <= p.gain_db <= 6 and 0.8 <= p.stretch_rate <= 1.25 and -2 <= p.semitones <= 2
        assert 2000 <= p.lowpass_hz <= 8000 and 10 <= p.snr_db <= 40
        start, width = p.masks["time_mask"]
        assert 0 <= width <= 26 and start + width <= 130


def test_a_mask_never_covers_a_whole_axis_and_outputs_that_let_it_are_refused():
    """With fewer mel bins (16) or frames (22) than a mask's max_width (24, 26), a mask could cover the
    whole axis: about one masked view in 25 was a constant, its mean, written without a word."""
    pool = make_pool(n_mels=16, frames=22)
    widths = {"frequency_mask": set(), "time_mask": set()}
    for seed in range(2000):
        for name, (start, width) in pool.draw(sample_rng(seed, "k", 0, 1)).masks.items():
            widths[name].add(width)
            assert start + width <= {"frequency_mask": 16, "time_mask": 22}[name]
    assert max(widths["frequency_mask"]) == 15 and max(widths["time_mask"]) == 21
    assert pool.masks_capped() and not make_pool().masks_capped()
    # outputs written with such masks before are refused, no others
    short = {"input": "x", "output": "y", "duration": 0.5}
    assert AugmentJob(validate_config(AugmentConfig, short)).fingerprint_extra() == {"masks_below_axis": True}
    assert AugmentJob(validate_config(AugmentConfig, {**short, "duration": 3.0})).fingerprint_extra() == {}


def test_the_spectrogram_settings_are_checked_before_any_block_runs():
    """A crop of n_fft / 2 samples or fewer failed every block in torch's STFT ("Padding size should be
    less than the corresponding input dimension"); a hop longer than n_fft left samples out of every view."""
    for settings, said in (
        ({"duration": 0.04}, r"duration 0.04 s is 882 samples at sample_rate 22050: the spectrogram needs more"),
        ({"n_fft": 512, "hop_length": 4096}, r"hop_length \(4096\) exceeds n_fft \(512\)"),
    ):
        with pytest.raises(ValueError, match=said):
            validate_config(AugmentConfig, {"input": "x", "output": "y", **settings})


def test_every_pool_entry_gets_chosen():
    pool = make_pool()
    seen = set()
    for seed in range(100):
        seen.update(pool.draw(sample_rng(seed, "k", 0, 1)).waveform)
    assert seen == set(pool.waveform_names) and len(seen) == 9


def test_disabled_entries_are_never_drawn():
    pool = AugmentationPool(
        WaveformPoolConfig(pitch_shift=None, noise=None),
        SpectrogramPoolConfig(time_mask=None),
        3,
        1,
        22050,
        66150,
        128,
        130,
    )
    for seed in range(50):
        p = pool.draw(sample_rng(seed, "k", 0, 1))
        assert "pitch_shift" not in p.waveform and "noise" not in p.waveform and p.spectrogram == ("frequency_mask",)


def test_packed_draws_carry_every_parameter_bit_for_bit():
    pool = make_pool()
    views = [pool.draw(sample_rng(seed, "k", 0, view)) for seed in range(200) for view in (1, 2)]
    views.append(ViewParams(waveform=(), spectrogram=(), noise_seed=2**63 - 2, gain_db=-1 / 3, shift=-16537))
    draws = ViewDraws.unpack(pack_views(views))
    assert len(draws) == len(views) and ViewDraws.PACKED_WIDTH == pack_views(views).shape[1]
    for i, v in enumerate(views):
        assert [n for n in WAVEFORM_ORDER if draws.chose(n)[i]] == list(v.waveform)
        assert [n for n in SPECTROGRAM_ORDER if draws.chose(n)[i]] == list(v.spectrogram)
        for name in ("gain_db", "sign", "stretch_rate", "semitones", "lowpass_hz", "highpass_hz", "snr_db", "shift"):
            assert getattr(draws, name)[i] == getattr(v, name), name  # exact, not close
        assert (draws.band_low_hz[i], draws.band_high_hz[i]) == v.band_hz
        assert int(draws.noise_seed[i]) == v.noise_seed
        for name in SPECTROGRAM_ORDER:
            start, width = v.masks.get(name, (0, 0))
            assert (getattr(draws, f"{name}_start")[i], getattr(draws, f"{name}_width")[i]) == (start, width)
    assert draws.shift.dtype == np.int64 and draws.noise_seed.dtype == np.uint64
    some = draws.take(np.array([3, 0]))
    assert some.gain_db.tolist() == [views[3].gain_db, views[0].gain_db]


def stage(**kw) -> AugmentStage:
    args = dict(
        seed=0,
        sample_rate=22050,
        duration=3.0,
        n_mels=128,
        n_fft=2048,
        hop_length=512,
        f_min=0.0,
        f_max=None,
        top_db=80.0,
        num_waveform_augs=3,
        num_spectrogram_augs=2,
        waveform_pool=WaveformPoolConfig().model_dump(),
        spectrogram_pool=SpectrogramPoolConfig().model_dump(),
    )
    args.update(kw)
    return AugmentStage(**args)


def batch(n: int, length: int = 66150) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "version": np.arange(n) % 3,
        "audio": (0.1 * rng.standard_normal((n, length))).astype(np.float32),
        "error": np.array([""] * (n - 1) + ["undecodable: x"], dtype=object),
    }


def test_stage_shapes_views_differ_and_error_rows_are_zero():
    out = stage()(batch(4))
    assert out["view1"].shape == (4, 1, 128, 130) and out["view1"].dtype == np.float32
    assert "audio" not in out
    assert not np.array_equal(out["view1"][0], out["view2"][0])  # two independent views
    assert np.all(out["view1"][3] == 0) and np.all(out["view2"][3] == 0)
    assert np.isfinite(out["view1"]).all()


def test_stage_output_is_independent_of_batch_composition():
    s = stage()
    full = s(batch(6))
    part = s({k: v[2:4] for k, v in batch(6).items()})
    np.testing.assert_array_equal(part["view1"], full["view1"][2:4])
    np.testing.assert_array_equal(part["view2"], full["view2"][2:4])


def test_views_drawn_in_the_jobs_decode_tasks_are_the_stages_own_bit_for_bit():
    """The job draws each view's parameters where it decodes (column ``view_draws``); the
    stage draws them itself without that column: the same draws, the same bytes."""
    job = AugmentJob(validate_config(AugmentConfig, {"input": "-", "output": "-", "seed": 3, "duration": 1.0}))
    plan = job.decoder().plan
    s = AugmentStage(**job.stage_kwargs(), device="cpu")
    rows = batch(5, 22050)
    rows["error"][2] = "undecodable"
    keys, versions = list(rows["key"]), rows["version"].tolist()
    column = np.stack([plan(k, 10.0)[v].extra[DRAWS_COLUMN] for k, v in zip(keys, versions)])
    assert column.shape == (5, 2, ViewDraws.PACKED_WIDTH)
    np.testing.assert_array_equal(column, s.draws(keys, versions))
    drawn_there = s({**rows, DRAWS_COLUMN: column})
    drawn_here = s(dict(rows))
    assert DRAWS_COLUMN not in drawn_there  # used up: it is no output column
    for view in ("view1", "view2"):
        assert drawn_there[view].tobytes() == drawn_here[view].tobytes()
        assert not drawn_there[view][2].any() and drawn_there[view][[0, 1, 3, 4]].any()


def test_a_clip_whose_spectrogram_overflows_is_an_error_row_not_inf_views():
    """Finite samples reaching 1e20 (a float WAV of garbage) overflow the float32 power: views of inf
    were written as training data, without an error row."""
    rows = batch(3, 22050)
    rows["error"][2] = ""
    rows["audio"][1] *= 1e21
    out = stage(duration=1.0)(rows)
    assert list(out["error"][[0, 2]]) == ["", ""] and np.isfinite(out["view1"][[0, 2]]).all()
    assert out["error"][1].startswith("non-finite spectrogram: the audio's peak is ") and "e+20" in out["error"][1]


def test_float16_output():
    out = stage(dtype="float16", duration=1.0)(batch(2, 22050))
    assert out["view1"].dtype == np.float16 and out["view1"].shape == (2, 1, 128, 44)


def test_seeds_and_splits_are_pure_functions():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    keys = [f"clip{i}.wav" for i in range(2000)]
    splits = [train_val_split(0, k, 0.2) for k in keys]
    assert 0.17 < splits.count("val") / len(keys) < 0.23
    assert splits == [train_val_split(0, k, 0.2) for k in keys]
    assert {assign_split(3, k, {"train": 0.7, "validate": 0.1, "test": 0.2}) for k in keys} == {
        "train",
        "validate",
        "test",
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stage_on_cuda_matches_shapes_and_is_deterministic():
    s = stage(device="cuda")
    a, b = s(batch(8)), s(batch(8))
    assert a["view1"].shape == (8, 1, 128, 130)
    np.testing.assert_array_equal(a["view1"], b["view1"])
    # One generator reseeded per view draws what a fresh generator per view draws.
    views = ViewDraws.unpack(s.draws([f"k{i}" for i in range(8)], [0] * 8))
    x = torch.zeros(len(views), 1000, device="cuda")
    noise = s.pool._noise(views, x)
    for i, seed in enumerate(views.noise_seed.tolist()):
        fresh = torch.Generator(device="cuda").manual_seed(seed)
        torch.testing.assert_close(noise[i], torch.randn(1000, generator=fresh, device="cuda"), rtol=0, atol=0)
