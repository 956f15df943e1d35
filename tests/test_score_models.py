"""The model interface: the seeded reference MAE, TorchScript and module:factory models (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.models import ModelLoadError, weights_sha256
from ray_pipelines.scoring.models import ModelSpec, ReferenceMAE, build_model, check_model
from ray_pipelines.stages.score import ScoreStage

# TorchScript is deprecated in torch 2.14 but still the format users have their models in.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")


class Zeros(torch.nn.Module):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(mel)


class Identity(torch.nn.Module):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return mel


class MaskAware(torch.nn.Module):
    """Returns the input with hidden positions set to 1: shows the mask reaches the model."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return mel

    @torch.jit.export
    def reconstruct(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return mel
        return mel.masked_fill(mask, 1.0)


def scripted(tmp_path, module: torch.nn.Module, name: str) -> str:
    path = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def mel_batch(n: int = 3) -> dict[str, np.ndarray]:
    mel = np.random.default_rng(0).normal(1.0, 2.0, size=(n, 1, 16, 22)).astype(np.float32)
    return {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "item": np.zeros(n, dtype=np.int64),
        "error": np.array([""] * n, dtype=object),
        "mel": mel,
    }


def run_stage(model: dict, **kwargs) -> dict[str, np.ndarray]:
    reconstruction = {"model": model, "n_mels": 16, "frames": 22, **kwargs}
    return ScoreStage(scorers={"reconstruction": reconstruction}, forward_batch=2)(mel_batch())


def test_reference_weights_come_from_the_seed_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = ReferenceMAE(seed=0), ReferenceMAE(seed=0), ReferenceMAE(seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    assert weights_sha256(a) == weights_sha256(b) != weights_sha256(c)
    mel = torch.randn(2, 1, 20, 37)  # not a multiple of the patch
    with torch.inference_mode():
        out = a.eval().reconstruct(mel)
        masked = a.reconstruct(mel, torch.zeros_like(mel, dtype=torch.bool).index_fill_(3, torch.arange(16), True))
    assert out.shape == mel.shape and not torch.equal(out, masked)


def test_torchscript_identity_scores_zero_and_zeros_score_the_mean_square(tmp_path):
    identity = run_stage({"kind": "torchscript", "path": scripted(tmp_path, Identity(), "identity")})
    assert identity["reconstruction_loss"].tolist() == [0.0, 0.0, 0.0]
    zeros = run_stage({"kind": "torchscript", "path": scripted(tmp_path, Zeros(), "zeros")})
    mean_square = np.square(mel_batch()["mel"].astype(np.float64)).mean(axis=(1, 2, 3))
    assert zeros["reconstruction_loss"] == pytest.approx(mean_square, rel=1e-12)
    assert zeros["reconstruction_loss"] == pytest.approx(zeros["signal_energy"], rel=1e-12)


def test_the_mask_reaches_a_model_with_a_reconstruct_method(tmp_path):
    path = scripted(tmp_path, MaskAware(), "mask_aware")
    unmasked = run_stage({"kind": "torchscript", "path": path})
    masked = run_stage({"kind": "torchscript", "path": path}, mask_ratio=0.5, mask_patch=(8, 8))
    assert unmasked["reconstruction_loss"].tolist() == [0.0, 0.0, 0.0]
    assert (masked["reconstruction_loss"] > 0).all()
    # a plain forward(mel) model sees hidden positions zeroed: the loss is the hidden share of mean(mel^2)
    zeroed = run_stage(
        {"kind": "torchscript", "path": scripted(tmp_path, Identity(), "identity")}, mask_ratio=0.5, mask_patch=(8, 8)
    )
    assert ((zeroed["reconstruction_loss"] > 0) & (zeroed["reconstruction_loss"] < zeroed["signal_energy"])).all()


def test_factory_with_a_weights_only_checkpoint(tmp_path):
    checkpoint = tmp_path / "mae.ckpt"
    torch.save({"state_dict": ReferenceMAE(patch=(8, 8), dim=16, depth=1, heads=2, seed=7).state_dict()}, checkpoint)
    factory = {
        "kind": "factory",
        "factory": "ray_pipelines.scoring.models:reference_mae",
        "kwargs": {"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2, "seed": 1},
    }
    from_checkpoint = run_stage({**factory, "checkpoint": str(checkpoint)})
    seed_seven = run_stage({"kind": "reference", "patch": (8, 8), "dim": 16, "depth": 1, "heads": 2, "seed": 7})
    seed_one = run_stage(factory)
    assert from_checkpoint["reconstruction_loss"].tolist() == seed_seven["reconstruction_loss"].tolist()
    assert from_checkpoint["reconstruction_loss"].tolist() != seed_one["reconstruction_loss"].tolist()


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    checkpoint = tmp_path / "pickled_module.ckpt"
    torch.save(ReferenceMAE(patch=(8, 8), dim=16, depth=1, heads=2), checkpoint)  # a whole module: a pickle
    spec = ModelSpec(
        kind="factory",
        factory="ray_pipelines.scoring.models:reference_mae",
        kwargs={"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2},
        checkpoint=str(checkpoint),
    )
    with pytest.raises(ModelLoadError, match=r"needs pickled code to load \(it needs .*ReferenceMAE\)"):
        build_model(spec)


def test_wrong_models_fail_before_any_work(tmp_path):
    class Halves(torch.nn.Module):
        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return mel[..., ::2]

    with pytest.raises(ValueError, match=r"maps \[B, 1, 16, 22\] to \[2, 1, 16, 11\]"):
        check_model(
            build_model(ModelSpec(kind="torchscript", path=scripted(tmp_path, Halves(), "halves"))),
            16,
            22,
            masked=False,
        )
    with pytest.raises(ValueError, match="model.path"):
        ModelSpec(kind="torchscript")
    with pytest.raises(ValueError, match="package.module:function"):
        ModelSpec(kind="factory", factory="no_colon")

    from ray_pipelines.jobs.score import JOB, ScoreConfig

    config = validate_config(
        ScoreConfig,
        {
            "input": str(tmp_path),
            "output": str(tmp_path / "out"),
            "scorers": ["reconstruction"],
            "model": {"kind": "torchscript", "path": str(tmp_path / "missing.pt")},
        },
    )
    with pytest.raises(ConfigError, match=r"model \(torchscript\): model\.path: model file not found: .*missing\.pt"):
        JOB(config).fingerprint_extra()
