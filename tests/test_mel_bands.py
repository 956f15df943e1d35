"""The config's check of mel settings counts the bands torchaudio's filter bank leaves empty."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchaudio

from ray_pipelines.mel_bands import empty_bands, hz_to_mel, mel_problem, mel_to_hz
from ray_pipelines.spectrogram import LogMelSpectrogram


@pytest.mark.parametrize(
    "sample_rate, n_fft, n_mels, f_min",
    [(22050, 2048, 128, 0), (16000, 400, 80, 0), (44100, 512, 128, 0), (32000, 512, 128, 50), (16000, 512, 256, 20)],
)
def test_empty_bands_are_the_zero_filters_of_torchaudios_bank(sample_rate, n_fft, n_mels, f_min):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio's own warning about the empty ones
        bank = torchaudio.functional.melscale_fbanks(
            n_fft // 2 + 1, f_min, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        )
    assert empty_bands(sample_rate, n_fft, n_mels, f_min, sample_rate / 2) == int((bank.max(dim=0).values == 0).sum())


def test_the_slaney_scale_is_torchaudios():
    hz = torch.tensor([0.0, 440.0, 999.0, 1000.0, 4000.0, 22050.0])
    mel = torchaudio.functional.functional._hz_to_mel
    assert [float(hz_to_mel(float(f))) for f in hz] == pytest.approx([mel(float(f), "slaney") for f in hz])
    assert mel_to_hz(hz_to_mel(hz.numpy())) == pytest.approx(hz.numpy())


def test_the_advice_is_a_setting_without_empty_bands():
    problem = mel_problem(44100, 512, 128, 0.0, None)
    assert problem is not None and "use n_mels 91 or fewer" in problem
    assert empty_bands(44100, 512, 91, 0.0, 22050.0) == 0 < empty_bands(44100, 512, 92, 0.0, 22050.0)
    assert mel_problem(22050, 2048, 128, 0.0, None) is None  # the defaults
    spectrogram = LogMelSpectrogram(44100, 512, 256, n_mels=91)(torch.randn(1, 44100))
    assert bool((spectrogram.amax(dim=-1) > spectrogram.amin(dim=-1)).all())  # every band moves with noise
