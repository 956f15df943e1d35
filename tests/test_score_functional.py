"""Score functions, masks and the score stage on hand-made batches (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_pipelines.scoring.functional import random_patch_mask, reconstruction_mse, signal_energy
from ray_pipelines.scoring.inputs import conform_mel
from ray_pipelines.scoring.models import ModuleReconstructor
from ray_pipelines.seeding import sample_rng
from ray_pipelines.spectrogram import LogMelSpectrogram
from ray_pipelines.stages.score import ScoreStage

SMALL_MODEL = {"kind": "reference", "patch": (8, 8), "dim": 16, "depth": 1, "heads": 2, "seed": 3}


class Zeros(torch.nn.Module):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(mel)


def test_signal_energy_of_a_known_tensor():
    mel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, -2.0]]]])  # [2, 1, 2, 2]
    assert signal_energy(mel).tolist() == [7.5, 1.0]  # (1+4+9+16)/4, 4/4
    assert signal_energy(mel).dtype == torch.float64
    assert signal_energy(mel.half()).tolist() == [7.5, 1.0]


def test_identity_model_loss_is_zero_and_zero_model_loss_is_mean_of_squares():
    mel = torch.randn(3, 1, 16, 22, generator=torch.Generator().manual_seed(0)) * 4 + 1
    identity, zeros = ModuleReconstructor(torch.nn.Identity()), ModuleReconstructor(Zeros())
    assert reconstruction_mse(mel, identity.reconstruct(mel)).tolist() == [0.0, 0.0, 0.0]
    expected = mel.double().square().mean(dim=(1, 2, 3))
    assert torch.equal(reconstruction_mse(mel, zeros.reconstruct(mel)), expected)
    with pytest.raises(ValueError, match="differs from input"):
        reconstruction_mse(mel, mel[:, :, :8])


def test_patch_mask_hides_whole_patches_from_the_seed_alone():
    # 16 x 22 with 8 x 8 patches: a 2 x 3 grid (the last column is 6 frames wide)
    mask = random_patch_mask(16, 22, (8, 8), 0.5, sample_rng(0, "a.pt", 0, "mask"))
    assert mask.shape == (16, 22) and mask.dtype == torch.bool
    blocks = [mask[r : r + 8, c : c + 8] for r in (0, 8) for c in (0, 8, 16)]
    assert all(bool(b.all()) or not bool(b.any()) for b in blocks)  # whole patches only
    assert sum(bool(b.all()) for b in blocks) == 6 - int(6 * 0.5)  # MAE's count
    again = random_patch_mask(16, 22, (8, 8), 0.5, sample_rng(0, "a.pt", 0, "mask"))
    other = [random_patch_mask(16, 22, (8, 8), 0.5, sample_rng(0, "a.pt", v, "mask")) for v in range(1, 6)]
    assert torch.equal(mask, again) and any(not torch.equal(mask, o) for o in other)
    assert not random_patch_mask(16, 22, (8, 8), 0.0, sample_rng(0, "a")).any()
    with pytest.raises(ValueError):
        random_patch_mask(16, 22, (8, 8), 1.0, sample_rng(0, "a"))


def mel_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    mel = np.random.default_rng(seed).normal(size=(n, 1, 16, 22)).astype(np.float32)
    return {
        "key": np.array([f"train/good/{i}.pt" for i in range(n)], dtype=object),
        "item": np.zeros(n, dtype=np.int64),
        "split": np.array(["train"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "samples_per_input": np.ones(n, dtype=np.int64),
        "class": np.array(["good"] * n, dtype=object),
        "group": np.array([""] * n, dtype=object),
        "mel": mel,
    }


def stage(device: str | None = None, **kwargs) -> ScoreStage:
    reconstruction = {"model": SMALL_MODEL, "n_mels": 16, "frames": 22, **kwargs}
    return ScoreStage(scorers={"reconstruction": reconstruction}, forward_batch=4, device=device)


def test_a_non_finite_score_makes_its_row_an_error_row():
    """DNSMOS of samples reaching 1e20 was NaN, stored as the clip's scores; here a loss that overflows."""
    batch = mel_batch(3)
    batch["mel"][1] *= 1e20
    out = stage()(batch)
    assert list(out["error"]) == ["", "score failed: reconstruction: non-finite reconstruction_loss", ""]
    assert np.isfinite(out["reconstruction_loss"][[0, 2]]).all()


def test_stage_scores_do_not_depend_on_batch_company():
    batch = mel_batch(7)
    for extra in ({}, {"mask_ratio": 0.5, "mask_patch": (8, 8)}):
        score = stage(**extra)
        whole = score({k: v.copy() for k, v in batch.items()})
        for i in (0, 3, 6):
            one = score({k: v[i : i + 1].copy() for k, v in batch.items()})
            assert one["reconstruction_loss"][0] == whole["reconstruction_loss"][i]  # bitwise
            assert one["signal_energy"][0] == whole["signal_energy"][i]
    masked, plain = stage(mask_ratio=0.5, mask_patch=(8, 8))(mel_batch(3)), stage()(mel_batch(3))
    assert not np.array_equal(masked["reconstruction_loss"], plain["reconstruction_loss"])


def test_stage_passes_error_rows_through_and_drops_the_payload():
    batch = mel_batch(3)
    batch["error"][1] = "wrong shape: ..."
    out = stage()(batch)
    assert "mel" not in out and out["key"].tolist() == batch["key"].tolist()
    assert np.isnan(out["reconstruction_loss"][1]) and np.isnan(out["signal_energy"][1])
    expected = np.square(batch["mel"][[0, 2]].astype(np.float64)).mean(axis=(1, 2, 3))
    assert out["signal_energy"][[0, 2]] == pytest.approx(expected, rel=1e-12)
    all_bad = mel_batch(2)
    all_bad["error"][:] = "broken"
    assert np.isnan(stage()(all_bad)["reconstruction_loss"]).all()


def test_stage_from_audio_computes_the_log_mel_and_normalises_it():
    rng = np.random.default_rng(1)
    audio = 0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000) + 0.01 * rng.normal(size=4000)
    spectrogram = dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, f_min=0.0, f_max=None, top_db=80.0)
    batch = mel_batch(2)
    del batch["mel"]
    batch["audio"] = np.stack([audio, 0.5 * audio]).astype(np.float32)
    out = stage(frames=32, spectrogram=spectrogram, normalize={"mean": -40.0, "std": 20.0})(batch)
    mel = LogMelSpectrogram(**spectrogram)(torch.from_numpy(batch["audio"]))
    expected = (((mel.double() + 40.0) / 20.0) ** 2).mean(dim=(1, 2)).numpy()
    assert out["signal_energy"] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(out["reconstruction_loss"]).all()


def test_conform_mel_accepts_two_layouts_and_names_what_is_wrong():
    mel, error = conform_mel(torch.ones(16, 22, dtype=torch.float64), 16, 22)
    assert error == "" and mel.shape == (1, 16, 22) and mel.dtype == np.float32
    assert conform_mel(np.ones((1, 16, 22)), 16, 22)[1] == ""
    assert conform_mel(np.ones((2, 16, 22)), 16, 22)[1].startswith("wrong shape: expected [1, 16, 22]")
    assert conform_mel(torch.ones(16, 23), 16, 22)[1].endswith("got [16, 23]")
    bad = np.ones((16, 22))
    bad[0, 0] = np.nan
    assert conform_mel(bad, 16, 22)[1] == "non-finite values: 1 NaN/inf in the spectrogram"
    assert conform_mel(torch.ones(16, 22, dtype=torch.complex64), 16, 22)[1].startswith("wrong dtype")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stage_on_cuda_matches_cpu_and_keeps_batch_independence():
    batch = mel_batch(7)
    on_gpu = stage(device="cuda", mask_ratio=0.5, mask_patch=(8, 8))
    model = on_gpu.scorers["reconstruction"].model
    assert next(model.parameters()).is_cuda and on_gpu.forward_batch == 4
    gpu = on_gpu({k: v.copy() for k, v in batch.items()})
    cpu = stage(mask_ratio=0.5, mask_patch=(8, 8))({k: v.copy() for k, v in batch.items()})
    assert gpu["reconstruction_loss"] == pytest.approx(cpu["reconstruction_loss"], rel=1e-4)
    assert gpu["signal_energy"] == pytest.approx(cpu["signal_energy"], rel=1e-6)
    one = on_gpu({k: v[2:3].copy() for k, v in batch.items()})
    assert one["reconstruction_loss"][0] == gpu["reconstruction_loss"][2]
