"""Discrete tokens, whatever axis order the model returns: stored [Q, N] in the narrowest integer
type, padding masks of N frames, the layout found from the expected N and refused when it cannot
be told (no Ray: the loader, the probe and the stage)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ray_pipelines.encoders.base import ModelLoadError
from ray_pipelines.encoders.config import ModelConfig
from ray_pipelines.encoders.loading import inspect_encoder, load_encoder, token_dtype
from ray_pipelines.stages.encode import EncodeStage
from tests.test_encode_units import batch_of, tokenizer_checkpoint, write_model

HOP, FRAMES = 256, 64
SAMPLE_SIZE = HOP * FRAMES


def tokenizer(tmp_path, layout: str = "QN", **kwargs) -> dict:
    factory, checkpoint = tokenizer_checkpoint(tmp_path)
    return {
        "kind": "factory",
        "factory": factory,
        "checkpoint": str(checkpoint),
        "factory_kwargs": {"layout": layout, **kwargs},
    }


def test_the_narrowest_integer_type_that_holds_the_codebook():
    assert [token_dtype(k).name for k in (2, 256, 257, 1000, 32768, 32769, 2**31, 2**31 + 1, None)] == [
        *("uint8", "uint8", "int16", "int16", "int16", "int32", "int32", "int64", "int64"),
    ]


@pytest.mark.parametrize("layout, axis", [("QN", 2), ("NQ", 1), ("N", -1)])
def test_the_frame_axis_is_found_and_tokens_are_stored_codebooks_first(tmp_path, layout, axis):
    model = tokenizer(tmp_path, layout)
    loaded = load_encoder(ModelConfig.model_validate(model), is_discrete=True)
    info = inspect_encoder(loaded, sample_size=SAMPLE_SIZE, is_discrete=True)
    codebooks = 1 if layout == "N" else 2
    assert (info.frames_axis, info.latent_channels, info.latent_frames) == (axis, codebooks, FRAMES)
    assert info.codebook_size == 32 and info.stored_dtype == "uint8"

    stage = EncodeStage(model=model, sample_size=SAMPLE_SIZE, is_discrete=True, frames_axis=axis)
    audio = np.random.default_rng(0).standard_normal((2, 2, SAMPLE_SIZE)).astype(np.float32) * 0.3
    out = stage(batch_of(audio, [SAMPLE_SIZE, HOP * 10 + 1]))
    assert out["latents"].shape == (2, codebooks, FRAMES) and out["latents"].dtype == np.uint8
    (tmp_path / "ref").mkdir()
    reference = tokenizer(tmp_path / "ref", "QN")  # the same seeded weights, codebooks first
    expected = EncodeStage(model=reference, sample_size=SAMPLE_SIZE, is_discrete=True)(batch_of(audio, [1, 1]))
    assert np.array_equal(out["latents"], expected["latents"][:, :codebooks])
    # the mask has N entries: all real, and 11 real frames (10 whole hops plus one sample)
    assert out["padding_mask"].shape == (2, FRAMES)
    assert out["padding_mask"].sum(1).tolist() == [FRAMES, 11]


def test_codebooks_as_many_as_frames_are_told_apart_by_a_second_probe(tmp_path):
    """Q = 16 = the probe's frame count: the probe one frame shorter decides."""
    model = tokenizer(tmp_path, "NQ", codebooks=16)
    # the checkpoint holds 2 codebooks: load the 16-codebook model from its factory alone
    model.pop("checkpoint")
    loaded = load_encoder(ModelConfig.model_validate(model), is_discrete=True)
    info = inspect_encoder(loaded, sample_size=SAMPLE_SIZE, is_discrete=True)
    assert (info.frames_axis, info.latent_channels, info.latent_frames) == (1, 16, FRAMES)


def test_a_model_whose_frame_axis_cannot_be_told_is_refused(tmp_path):
    source = write_model(
        tmp_path,
        "fixed_codes",
        "import torch\n"
        "class Fixed(torch.nn.Module):\n"
        "    sample_rate, channels, downsampling_ratio, codebook_size = 16000, 1, 256, 8\n"
        "    def __init__(self, shape):\n"
        "        super().__init__()\n"
        "        self.shape = shape\n"
        "    def encode(self, audio):\n"
        "        return torch.zeros(audio.shape[0], *self.shape, dtype=torch.int64)\n"
        "def make(shape):\n"
        "    return Fixed(shape)\n",
    )
    # [8, 8]: the ratio given is half the model's (8 frames where 16 were due): no axis of 16, though equal
    cases = (
        ([16, 16], "both axes kept that length"),
        ([3, 5], "no axis of that length"),
        ([8, 8], "no axis of that length"),
    )
    for shape, reason in cases:
        config = ModelConfig(kind="factory", factory=f"{source}:make", factory_kwargs={"shape": shape})
        loaded = load_encoder(config, is_discrete=True)
        with pytest.raises(ModelLoadError, match=f"cannot tell the model's frame axis.*{reason}"):
            inspect_encoder(loaded, sample_size=SAMPLE_SIZE, is_discrete=True)


def test_codebook_size_from_the_config_and_tokens_outside_it(tmp_path):
    model = tokenizer(tmp_path)
    with pytest.raises(
        ModelLoadError, match="model.codebook_size: the config says 1000 but the model declares codebook_size = 32"
    ):
        load_encoder(ModelConfig.model_validate({**model, "codebook_size": 1000}), is_discrete=True)
    # a model that does not declare it: the config's, and a token past it is an error row
    small = tokenizer(tmp_path, codebook_size=32)
    stage = EncodeStage(model=small, sample_size=SAMPLE_SIZE, is_discrete=True)
    stage.encoder.codebook_size = stage.codebook_size = 4  # as if the config said 4 for 32 codes
    audio = np.random.default_rng(1).standard_normal((1, 2, SAMPLE_SIZE)).astype(np.float32)
    out = stage(batch_of(audio, [SAMPLE_SIZE]))
    assert out["error"][0].startswith("tokens outside the codebook [0, 4)")
    with torch.no_grad():
        assert stage.encoder.encode(torch.from_numpy(audio)).max() >= 4


SAT_TOKENIZER = '''
import torch
from torch import nn
from stable_audio_tools.models.bottleneck import FSQBottleneck, RVQBottleneck


class SatTokenizer(nn.Module):
    """A strided projection into one of stable-audio-tools' own discrete bottlenecks."""

    def __init__(self, bottleneck="rvq", hop=256, dim=8, sample_rate=44100, channels=2):
        super().__init__()
        self.sample_rate, self.channels, self.downsampling_ratio = sample_rate, channels, hop
        torch.manual_seed(0)  # the driver and the stage build the same weights
        self.proj = nn.Conv1d(channels, dim, kernel_size=hop, stride=hop)
        if bottleneck == "rvq":  # its tokens come [B, N, Q]
            self.bottleneck = RVQBottleneck(dim=dim, num_quantizers=2, codebook_size=32)
        else:  # FSQ: [B, Q, N]
            self.bottleneck = FSQBottleneck(dim=dim, levels=[5, 4, 4], num_codebooks=2)
        self.codebook_size = int(self.bottleneck.codebook_size)

    def encode(self, audio):
        _, info = self.bottleneck.encode(self.proj(audio), return_info=True)
        return info[self.bottleneck.tokens_id]


def make(**kwargs):
    return SatTokenizer(**kwargs).eval()
'''


@pytest.mark.parametrize("bottleneck, axis, codebook_size", [("rvq", 1, 32), ("fsq", 2, 80)])
def test_stable_audio_tools_bottlenecks_read_back_by_its_own_pre_encoded_dataset(
    tmp_path, bottleneck, axis, codebook_size
):
    """stable-audio-tools' RVQ and FSQ bottlenecks through the stage and the sat layout, read back
    by its PreEncodedDataset (skipped where stable-audio-tools is not installed: it pins libraries
    this project cannot share, e.g. pandas 2.0.2)."""
    pytest.importorskip("stable_audio_tools.models.bottleneck")
    dataset_module = pytest.importorskip("stable_audio_tools.data.dataset")
    from ray_pipelines.encoders.sat_sink import SatSink, write_filelist
    from ray_pipelines.jobs.encode import EncodeJob
    from ray_pipelines.storage import Storage

    source = write_model(tmp_path, f"sat_{bottleneck}", SAT_TOKENIZER)
    model = {"kind": "factory", "factory": f"{source}:make", "factory_kwargs": {"bottleneck": bottleneck}}
    info = inspect_encoder(
        load_encoder(ModelConfig.model_validate(model), is_discrete=True), sample_size=SAMPLE_SIZE, is_discrete=True
    )
    assert (info.frames_axis, info.latent_channels, info.codebook_size) == (axis, 2, codebook_size)
    assert info.stored_dtype == "uint8"
    stage = EncodeStage(model=model, sample_size=SAMPLE_SIZE, is_discrete=True, frames_axis=axis)
    audio = np.random.default_rng(2).standard_normal((2, 2, SAMPLE_SIZE)).astype(np.float32) * 0.3
    rows = stage(batch_of(audio, [SAMPLE_SIZE, HOP * 10 + 1], keys=["full.wav", "short.wav"]))
    with torch.inference_mode():
        direct = stage.encoder.encode(torch.from_numpy(audio)).numpy()
    expected = direct.transpose(0, 2, 1) if axis == 1 else direct  # [B, Q, N]
    assert np.array_equal(rows["latents"], expected) and rows["latents"].dtype == np.uint8

    out = tmp_path / "out"
    columns = EncodeJob.output_columns.fget(None)
    sink = SatSink(
        output=str(out), storage_options={}, fingerprint="t" * 64, index_column="window", output_columns=columns
    )
    sink.write_rows(rows, rank=0)
    files = [f for part in (out / "_manifests").glob("*.json") for f in json.loads(part.read_text())["files"]]
    write_filelist(Storage(str(out)), files)

    config = dataset_module.LocalDatasetConfig(id="tokens", path=str(out))
    whole = {info["relpath"]: (latents, info) for latents, info in dataset_module.PreEncodedDataset([config])}
    assert sorted(whole) == ["full.wav", "short.wav"]
    for i, key in enumerate(rows["key"]):
        latents, metadata = whole[key]
        assert latents.shape == (2, FRAMES) and torch.equal(latents, torch.from_numpy(expected[i]))
        assert len(metadata["padding_mask"][0]) == FRAMES
    assert whole["short.wav"][1]["padding_mask"][0].sum() == 11
    cropped = dataset_module.PreEncodedDataset([config], latent_crop_length=8)
    latents, metadata = cropped[0]
    assert latents.shape == (2, 8) and len(metadata["padding_mask"][0]) == 8  # it crops N, not Q
