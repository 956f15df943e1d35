"""Loading encoders: an ``Encoder`` subclass's attributes from the config, and TorchScript models without
an exported ``encode``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ray_pipelines.encoders import ModelConfig, ModelLoadError, inspect_encoder, load_encoder
from ray_pipelines.jobs.encode import main
from ray_pipelines.stages.encode import EncodeStage
from tests.test_encode_units import batch_of, write_model

# Subclasses of the documented interface: one sets none of the attributes, one declares all three.
ENCODER_SUBCLASSES = """
import torch
from torch import nn

from ray_pipelines.encoders.base import Encoder


class Bare(Encoder):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(2, 8, 256, stride=256)

    def encode(self, audio):
        return self.conv(audio)


class Declared(Bare):
    sample_rate, channels, downsampling_ratio = 44100, 2, 256


def make_bare():
    return Bare()


def make_declared():
    return Declared()
"""


def factory(tmp_path, function: str, **config) -> ModelConfig:
    return ModelConfig(
        kind="factory", factory=f"{write_model(tmp_path, 'subclasses', ENCODER_SUBCLASSES)}:{function}", **config
    )


def test_an_encoder_subclass_gets_what_it_does_not_set_from_the_config(tmp_path):
    """It failed with AttributeError: 'Bare' object has no attribute 'sample_rate' (exit 1)."""
    model = factory(tmp_path, "make_bare", downsampling_ratio=256)
    encoder = load_encoder(model, sample_rate=44100, channels=2).encoder
    assert (encoder.sample_rate, encoder.channels, encoder.downsampling_ratio) == (44100, 2, 256)
    info = inspect_encoder(load_encoder(model, sample_rate=44100, channels=2), sample_size=2048, is_discrete=False)
    assert (info.latent_channels, info.latent_frames) == (8, 8)
    # the actors load it the same way and encode with it
    stage = EncodeStage(model=model.model_dump(mode="json"), sample_size=2048, sample_rate=44100, audio_channels=2)
    audio = (0.3 * np.random.default_rng(0).standard_normal((1, 2, 2048))).astype(np.float32)
    out = stage(batch_of(audio, [2048]))
    assert out["error"][0] == "" and np.array_equal(
        out["latents"][0], encoder.encode(torch.from_numpy(audio)).numpy()[0]
    )


def test_an_encoder_subclass_attribute_neither_side_gives_is_a_config_error(tmp_path, capsys):
    with pytest.raises(
        ModelLoadError,
        match=r"^model.downsampling_ratio: the model from .*subclasses.py:make_bare does not declare "
        r"downsampling_ratio; set model.downsampling_ratio in the config$",
    ):
        load_encoder(factory(tmp_path, "make_bare"), sample_rate=44100, channels=2)
    with pytest.raises(ModelLoadError, match=r"^sample_rate: .* does not declare sample_rate; set sample_rate in"):
        load_encoder(factory(tmp_path, "make_bare", downsampling_ratio=256), channels=2)
    code = main(
        [
            "--no-progress",
            "--set",
            f"input={tmp_path}",
            "--set",
            f"output={tmp_path / 'out'}",
            "--set",
            "model.kind=factory",
            "--set",
            f"model.factory={tmp_path / 'subclasses.py'}:make_bare",
            "--set",
            "model.downsampling_ratio=256",
            "--set",
            "sample_rate=44100",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "audio_channels: the model from" in err and "does not declare channels; set audio_channels" in err
    assert "Traceback" not in err and "AttributeError" not in err


def test_a_downsampling_ratio_the_model_contradicts_is_refused(tmp_path):
    """A subclass declaring 256 with model.downsampling_ratio: 512 was accepted and ran at 256."""
    with pytest.raises(
        ModelLoadError,
        match=r"^model.downsampling_ratio: the config says 512 but the model takes 256; "
        r"remove model.downsampling_ratio from the config \(it comes from the model\) or fix it$",
    ):
        load_encoder(factory(tmp_path, "make_declared", downsampling_ratio=512))
    assert load_encoder(factory(tmp_path, "make_declared", downsampling_ratio=256)).encoder.downsampling_ratio == 256
    with pytest.raises(ModelLoadError, match=r"^sample_rate: the config says 48000 but the model takes 44100"):
        load_encoder(factory(tmp_path, "make_declared"), sample_rate=48000)


class Autoencoder(nn.Module):
    """``encode`` for latents, ``forward`` for the reconstruction: scripted without @torch.jit.export, its
    TorchScript file has no ``encode``."""

    def __init__(self):
        super().__init__()
        self.sample_rate, self.channels, self.downsampling_ratio = 44100, 2, 256
        self.enc = nn.Conv1d(2, 8, 256, stride=256)
        self.dec = nn.ConvTranspose1d(8, 2, 256, stride=256)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.enc(audio)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(audio))


class ForwardEncoder(nn.Module):
    """An encoder whose ``forward`` is its encode (the docs' "or make it forward")."""

    def __init__(self):
        super().__init__()
        self.sample_rate, self.channels, self.downsampling_ratio = 44100, 2, 256
        self.enc = nn.Conv1d(2, 8, 256, stride=256)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.enc(audio)


def scripted(module: nn.Module, path) -> ModelConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, TorchScript files still load
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return ModelConfig(kind="torchscript", path=str(path))


def test_a_torchscript_model_without_an_exported_encode_is_named_in_the_error(tmp_path):
    """Its forward (the reconstruction) was called and the error blamed model.downsampling_ratio only."""
    loaded = load_encoder(scripted(Autoencoder(), tmp_path / "ae.ts"))
    with pytest.raises(ModelLoadError) as error:
        inspect_encoder(loaded, sample_size=4096, is_discrete=False)
    assert str(error.value).startswith("cannot tell the model's frame axis: for 4096 samples")
    assert str(error.value).endswith(
        "check model.downsampling_ratio. The TorchScript model has no encode method, so its forward was called: "
        "if encode is the method to call, mark it @torch.jit.export before torch.jit.script and save the model again"
    )
    # a model meant to be called through forward still works
    forward = load_encoder(scripted(ForwardEncoder(), tmp_path / "forward.ts"))
    info = inspect_encoder(forward, sample_size=4096, is_discrete=False)
    assert (info.latent_channels, info.latent_frames) == (8, 16)
    audio = torch.randn(1, 2, 4096)
    assert torch.equal(forward.encoder.encode(audio), forward.encoder.module(audio))
