"""The encode job's parts without Ray: padding masks, encoders and loaders, the stage, ids, reader crops.

Also holds the small test models (as source written to a file, loaded by
path as ``model.factory``) that the encode job tests share.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_pipelines.audio.decode import DecodeError, is_retryable
from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.encoders import (
    ModelConfig,
    ModelLoadError,
    ReferenceAutoencoder,
    ReferenceModelConfig,
    inspect_encoder,
    load_encoder,
    posterior_noise,
    probe_encoder,
)
from ray_pipelines.encoders.sat_sink import (
    id_collisions,
    is_encode_data_file,
    is_sample_file,
    sample_id,
    write_filelist,
)
from ray_pipelines.engine.runner import select_inputs
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob, WindowPlan, main
from ray_pipelines.padding import audio_padding_mask, downsample_mask, latent_padding_mask
from ray_pipelines.readers.encode import crop_latents
from ray_pipelines.seeding import derive_seed
from ray_pipelines.stages.encode import EncodeStage, window_metadata

# ---- shared test models -------------------------------------------------------------

# Discrete: frame features (a strided convolution), then for each of Q codebooks the
# index of the nearest codeword (argmin of distances): tokens [B, Q, N].
CODEBOOK_MODEL = """
import torch
from torch import nn


class CodebookTokenizer(nn.Module):
    def __init__(self, channels=2, hop=256, features=8, codebooks=2, codebook_size=32, sample_rate=44100, layout="QN"):
        super().__init__()
        self.sample_rate, self.channels, self.downsampling_ratio = sample_rate, channels, hop
        self.codebook_size, self.layout = codebook_size, layout
        self.proj = nn.Conv1d(channels, features, kernel_size=hop, stride=hop, bias=False)
        self.register_buffer("codebooks", torch.zeros(codebooks, codebook_size, features))

    @torch.jit.export
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        feats = self.proj(audio).transpose(1, 2)                                  # [B, N, F]
        dist = ((feats[:, None, :, None, :] - self.codebooks[None, :, None, :, :]) ** 2).sum(-1)  # [B, Q, N, K]
        tokens = dist.argmin(-1)                                                  # [B, Q, N]
        if self.layout == "NQ":  # as stable-audio-tools' RVQ bottlenecks return them
            return tokens.transpose(1, 2)
        if self.layout == "N":  # one codebook, no codebook axis
            return tokens[:, 0]
        return tokens


def make_tokenizer(**kwargs):
    return CodebookTokenizer(**kwargs)
"""

# Identity "encoder" (ratio 1): its latents are the decoded window itself, so the
# output shows exactly which samples each window holds.
IDENTITY_MODEL = """
import torch
from torch import nn


class Identity(nn.Module):
    def __init__(self, sample_rate=16000, channels=1):
        super().__init__()
        self.sample_rate, self.channels, self.downsampling_ratio = sample_rate, channels, 1

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.abs().max() > 5000:  # (as torch raises it for a GPU another job fills)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if audio.abs().max() > 100:
            raise ValueError("audio out of range")
        return audio.clone()


def make_identity(**kwargs):
    return Identity(**kwargs)
"""


# A user VAE: a posterior (mean, std) besides encode (its mean).
VAE_MODEL = """
import torch
from torch import nn


class TinyVAE(nn.Module):
    sample_rate, channels, downsampling_ratio = 16000, 1, 64

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=64, stride=64)

    def posterior(self, audio):
        mean, scale = self.conv(audio).chunk(2, dim=1)
        return mean, nn.functional.softplus(scale) + 1e-4

    def encode(self, audio):
        return self.posterior(audio)[0]


def make_vae():
    torch.manual_seed(0)
    return TinyVAE()
"""


def write_model(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def tokenizer_checkpoint(folder: Path, seed: int = 5) -> tuple[str, Path]:
    """The codebook model's file and a weights-only checkpoint of seeded weights."""
    source = write_model(folder, "codebook_model", CODEBOOK_MODEL)
    generator = torch.Generator().manual_seed(seed)
    state = {
        "proj.weight": torch.randn(8, 2, 256, generator=generator) * 0.05,
        "codebooks": torch.randn(2, 32, 8, generator=generator) * 0.1,
    }
    checkpoint = folder / "codebook.pt"
    torch.save({"state_dict": state}, checkpoint)
    return f"{source}:make_tokenizer", checkpoint


def batch_of(audio: np.ndarray, valid: list[int], keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """A decoded batch as the engine's decoder makes it."""
    n = len(audio)
    keys = keys or [f"clip{i}.wav" for i in range(n)]
    return {
        "key": np.array(keys, dtype=object),
        "window": np.zeros(n, dtype=np.int64),
        "samples_per_input": np.ones(n, dtype=np.int64),
        "split": np.array([""] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "etag": np.array([""] * n, dtype=object),
        "source": np.array([f"/data/{k}" for k in keys], dtype=object),
        "start_seconds": np.zeros(n),
        "file_seconds": np.array(valid) / 44100.0,
        "valid_samples": np.array(valid, dtype=np.int64),
        "audio": audio.astype(np.float32),
    }


SMALL_BUILTIN = {"kind": "builtin", "builtin": {"hidden": 4, "latent_dim": 4, "strides": [4, 4]}}


# ---- padding masks --------------------------------------------------------------------


def test_padding_mask_is_one_on_real_samples_and_any_real_sample_makes_a_frame_real():
    mask = audio_padding_mask(np.array([0, 1, 300, 1024]), 1024)
    assert mask.shape == (4, 1024) and mask.dtype == np.uint8
    assert mask.sum(1).tolist() == [0, 1, 300, 1024] and mask[2, 299] == 1 and mask[2, 300] == 0
    frames = downsample_mask(mask, 256, 4)
    assert frames.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    # the direct form equals the max-pool of the audio-rate mask, for every length
    valid = np.arange(0, 1025)
    assert np.array_equal(latent_padding_mask(valid, 256, 4), downsample_mask(audio_padding_mask(valid, 1024), 256, 4))
    # more frames than the audio covers: those frames are padding
    assert downsample_mask(audio_padding_mask(np.array([1024]), 1024), 256, 6).tolist() == [[1, 1, 1, 1, 0, 0]]


def test_window_metadata_follows_stable_audio_tools_conventions():
    md = window_metadata(np.array([0.0, 2.0, 0.0]), np.array([5.5, 5.5, 0.5]), sample_size=88200, sample_rate=44100)
    assert md["seconds_start"].tolist() == [0, 2, 0] and md["seconds_total"].tolist() == [6, 6, 1]
    assert np.allclose(md["timestamps"], [[0, 2 / 5.5], [2 / 5.5, 4 / 5.5], [0, 1]])


# ---- encoders ---------------------------------------------------------------------------


def test_builtin_model_has_seeded_weights_and_the_documented_shapes():
    a, b = ReferenceAutoencoder(), ReferenceAutoencoder()
    c = ReferenceAutoencoder(ReferenceModelConfig(seed=1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    audio = torch.randn(2, 2, 4 * 256)
    mean, std = a.posterior(audio)
    assert mean.shape == std.shape == (2, 16, 4) and bool((std > 0).all())
    assert torch.equal(a.encode(audio), mean) and a.decode(mean).shape == (2, 2, 1024)
    assert (a.sample_rate, a.channels, a.downsampling_ratio, a.is_discrete) == (44100, 2, 256, False)


def test_posterior_noise_depends_on_the_sample_not_the_batch():
    together = posterior_noise(7, ["a", "b"], [0, 3], (4, 5))
    alone = posterior_noise(7, ["b"], [3], (4, 5))
    assert torch.equal(together[1], alone[0]) and not torch.equal(together[0], together[1])
    assert not torch.equal(posterior_noise(8, ["b"], [3], (4, 5)), alone)


def test_torchscript_model_loads_with_declared_attributes_and_clear_errors(tmp_path):
    source = write_model(tmp_path, "codebook_ts", CODEBOOK_MODEL)
    import importlib.util

    spec = importlib.util.spec_from_file_location("codebook_ts", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.CodebookTokenizer()
    torch.nn.init.normal_(model.codebooks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, TorchScript files still load
        scripted = torch.jit.script(model)
    path = tmp_path / "tokenizer.ts"
    scripted.save(str(path))

    cfg = ModelConfig(kind="torchscript", path=str(path))
    loaded = load_encoder(cfg, is_discrete=True)
    info = inspect_encoder(loaded, sample_size=256 * 64, is_discrete=True)
    assert (info.sample_rate, info.channels, info.downsampling_ratio, info.latent_channels) == (44100, 2, 256, 2)
    assert info.output_dtype == "int64" and len(info.weights_sha256) == 64
    audio = torch.randn(1, 2, 256 * 8)
    assert torch.equal(loaded.encoder.encode(audio), model.encode(audio))
    with pytest.raises(ModelLoadError, match="returns integer tokens.*is_discrete: true"):
        inspect_encoder(load_encoder(cfg), sample_size=256 * 64, is_discrete=False)
    with pytest.raises(ModelLoadError, match="sample_rate: the config says 48000 but"):
        load_encoder(cfg, sample_rate=48000, is_discrete=True)
    with pytest.raises(ModelLoadError, match="not a multiple of the model's downsampling ratio 256; use 1024 or 1280"):
        inspect_encoder(loaded, sample_size=1100, is_discrete=True)
    with pytest.raises(ModelLoadError) as missing:
        load_encoder(ModelConfig(kind="torchscript", path=str(tmp_path / "missing.ts")))
    assert str(missing.value) == f"model.path: model file not found: {tmp_path / 'missing.ts'}"


def test_a_missing_model_file_names_its_key_and_where_a_relative_path_was_looked_for(tmp_path, monkeypatch):
    """Was "model file not found: models/vae.ts": no key (docs/encode.md promised it), no folder."""
    factory, _ = tokenizer_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as missing:
        load_encoder(ModelConfig(kind="factory", factory=factory, checkpoint="models/nope.ckpt"))
    assert str(missing.value) == f"model.checkpoint: model file not found: models/nope.ckpt (relative to {tmp_path})"


def test_factory_checkpoint_is_loaded_weights_only(tmp_path):
    factory, checkpoint = tokenizer_checkpoint(tmp_path)
    loaded = load_encoder(ModelConfig(kind="factory", factory=factory, checkpoint=str(checkpoint)), is_discrete=True)
    expected = torch.load(checkpoint, weights_only=True)["state_dict"]["codebooks"]
    assert torch.equal(loaded.encoder.module.codebooks, expected)
    # a checkpoint that pickles an arbitrary object is refused, not executed
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": expected, "extra": Path("x")}, unsafe)
    with pytest.raises(ModelLoadError, match=r"weights_only=True"):
        load_encoder(ModelConfig(kind="factory", factory=factory, checkpoint=str(unsafe)), is_discrete=True)
    with pytest.raises(ModelLoadError, match="has no callable 'nope'"):
        load_encoder(ModelConfig(kind="factory", factory=factory.replace("make_tokenizer", "nope")))
    with pytest.raises(ModelLoadError, match="built-in reference model is a continuous VAE"):
        load_encoder(ModelConfig(), is_discrete=True)


def test_a_training_checkpoints_autoencoder_is_taken_as_stable_audio_tools_exports_it():
    """A training checkpoint holds the discriminator too: the prefix was stripped only when every key had
    it, so real ones were refused ("does not fit"). export_model takes the EMA copy when there is one."""
    from ray_pipelines.encoders.stable_audio import autoencoder_state

    own = {"encoder.layers.0.weight": 1, "bottleneck.proj": 2}
    training = {**{f"autoencoder.{k}": v for k, v in own.items()}, "discriminator.convs.0": 3, "losses_disc.w": 4}
    assert autoencoder_state(training) == own
    ema = {f"autoencoder_ema.ema_model.{k}": 10 * v for k, v in own.items()}
    assert autoencoder_state({**training, **ema, "autoencoder_ema.step": 7}) == {k: 10 * v for k, v in own.items()}
    assert autoencoder_state(own) == own  # an exported model's state dict


def test_missing_stable_audio_tools_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    try:
        import stable_audio_tools  # noqa: F401

        pytest.skip("stable-audio-tools is installed here")
    except ImportError:
        pass
    (tmp_path / "model_config.json").write_text('{"model_type": "autoencoder", "sample_rate": 44100}')
    (tmp_path / "model.ckpt").write_bytes(b"")
    code = main(
        [
            "--no-progress",
            "--set",
            f"input={tmp_path}",
            "--set",
            f"output={tmp_path / 'out'}",
            "--set",
            "model.kind=stable-audio-tools",
            "--set",
            f"model.path={tmp_path / 'model_config.json'}",
            "--set",
            f"model.checkpoint={tmp_path / 'model.ckpt'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "needs the optional stable-audio-tools package" in err and "pip install stable-audio-tools" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="model_half .* and bf16 are exclusive"):
        validate_config(EncodeConfig, {"input": "x", "output": "y", "model_half": True, "bf16": True})
    with pytest.raises(ConfigError, match="model.kind 'factory' needs model.factory"):
        validate_config(EncodeConfig, {"input": "x", "output": "y", "model": {"kind": "factory"}})
    # A key the kind does not read (it encoded everything with the built-in model's untrained weights).
    with pytest.raises(
        ConfigError,
        match=r"model.kind 'builtin' \(the default\) does not read model.path; set model.kind "
        r"\(stable-audio-tools or torchscript\)",
    ):
        validate_config(EncodeConfig, {"input": "x", "output": "y", "model": {"path": "s3://b/vae.ts"}})
    with pytest.raises(ConfigError, match=r"does not read model.factory, model.path; no one model.kind reads them all"):
        validate_config(EncodeConfig, {"input": "x", "output": "y", "model": {"path": "a.ts", "factory": "m:f"}})
    sat = {"kind": "stable-audio-tools", "path": "c.json", "checkpoint": "m.ckpt", "downsampling_ratio": 2048}
    with pytest.raises(ConfigError, match="model.kind 'stable-audio-tools' does not read model.downsampling_ratio"):
        validate_config(EncodeConfig, {"input": "x", "output": "y", "model": sat})
    # ... while the whole config the actors are handed (every key, defaults included) is read back.
    factory = validate_config(
        EncodeConfig, {"input": "x", "output": "y", "model": {"kind": "factory", "factory": "m:f"}}
    )
    assert ModelConfig.model_validate(factory.model.model_dump(mode="json")) == factory.model
    for bad in ({"silence_db": 10}, {"silence_db": float("nan")}, {"min_duration": float("inf")}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))}: "):
            validate_config(EncodeConfig, {"input": "x", "output": "y", **bad})
    cfg = validate_config(EncodeConfig, {"input": "x", "output": "y", "sample_size": 1000})
    with pytest.raises(ModelLoadError, match="sample_size: 1000 is not a multiple"):
        EncodeJob(cfg)
    # a mono model's output records that it got the channels' mean (outputs given the left channel are refused)
    mono = {"input": "x", "output": "y", "sample_size": 1024, "model": {"builtin": {"channels": 1}}}
    assert EncodeJob(validate_config(EncodeConfig, mono)).fingerprint_extra()["mono_from"] == "mean"
    defaults = validate_config(EncodeConfig, {"input": "x", "output": "y"})
    assert (defaults.batch_size, defaults.sample_size, defaults.model_half, defaults.is_discrete) == (
        1,
        1320960,
        False,
        False,
    )
    # limit_batches and shuffle pick inputs; they do not change what is written
    other = validate_config(EncodeConfig, {"input": "x", "output": "y", "limit_batches": 3, "shuffle": True})
    assert other.fingerprint() == defaults.fingerprint()


def test_window_plan_covers_the_file_with_consecutive_windows():
    first = WindowPlan("first", 1000, 1000)(key="k", file_seconds=3.5)
    every = WindowPlan("all", 1000, 1000)(key="k", file_seconds=3.5)
    assert [(w.index, w.start) for w in first] == [(0, 0.0)]
    assert [(w.index, w.start) for w in every] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert len(WindowPlan("all", 1000, 1000)("k", 3.0)) == 3 and every[0].extra == {"file_seconds": 3.5}
    with pytest.raises(DecodeError, match="empty"):
        WindowPlan("all", 1000, 1000)("k", 0.0)


# ---- the stage ---------------------------------------------------------------------------


def test_stage_shapes_dtypes_mask_and_batch_independent_bytes():
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((3, 2, 512))).astype(np.float32)
    audio[1, :, 300:] = 0.0
    stage = EncodeStage(model=SMALL_BUILTIN, sample_size=512, seed=1, batch_size=3)
    out = stage(batch_of(audio, [512, 300, 512]))
    assert out["latents"].shape == (3, 4, 32) and out["latents"].dtype == np.float32
    assert out["padding_mask"][1].tolist() == [1] * 19 + [0] * 13 and out["padding_mask"][0].all()
    assert "audio" not in out and list(out["error"]) == ["", "", ""]
    # each row's bytes do not depend on its batch
    alone = stage(batch_of(audio[1:2], [300], ["clip1.wav"]))
    assert alone["latents"][0].tobytes() == out["latents"][1].tobytes()
    # the posterior is sampled per key; its mean is the model's encode
    mean = EncodeStage(model=SMALL_BUILTIN, sample_size=512, seed=1, sample_posterior=False)(batch_of(audio, [512] * 3))
    expected = np.concatenate([stage.encoder.encode(torch.from_numpy(audio[i : i + 1])).numpy() for i in range(3)])
    assert np.array_equal(mean["latents"], expected) and not np.array_equal(mean["latents"], out["latents"])

    half = EncodeStage(model=SMALL_BUILTIN, sample_size=512, seed=1, precision="fp16")(batch_of(audio, [512] * 3))
    assert half["latents"].dtype == np.float16
    assert np.abs(half["latents"].astype(np.float32) - out["latents"]).max() < 0.05
    bf16 = EncodeStage(model=SMALL_BUILTIN, sample_size=512, seed=1, precision="bf16")(batch_of(audio, [512] * 3))
    assert bf16["latents"].dtype == np.float32


def test_a_user_vae_posterior_is_sampled_per_key(tmp_path):
    model = {"kind": "factory", "factory": f"{write_model(tmp_path, 'tiny_vae', VAE_MODEL)}:make_vae"}
    audio = (0.3 * np.random.default_rng(2).standard_normal((2, 1, 640))).astype(np.float32)
    sampled = EncodeStage(model=model, sample_size=640, seed=4)
    assert sampled.sample_posterior and sampled.encoder.has_posterior
    a = sampled(batch_of(audio, [640, 640], ["a.wav", "b.wav"]))["latents"]
    b = sampled(batch_of(audio[::-1].copy(), [640, 640], ["b.wav", "a.wav"]))["latents"]
    assert a.shape == (2, 2, 10) and np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])
    mean = EncodeStage(model=model, sample_size=640, seed=4, sample_posterior=False)(batch_of(audio, [640, 640]))
    expected = sampled.encoder.encode(torch.from_numpy(audio[:1])).numpy()[0]
    assert np.array_equal(mean["latents"][0], expected) and not np.array_equal(a[0], expected)


def test_a_factory_without_a_checkpoint_is_known_by_the_weights_it_builds(tmp_path):
    """Its weights were hashed as its name: an unseeded initialisation gave every actor other weights,
    and a download that changed upstream mixed rows of two models, without a word."""
    seeded = {"kind": "factory", "factory": f"{write_model(tmp_path, 'tiny_vae', VAE_MODEL)}:make_vae"}
    unseeded_source = VAE_MODEL.replace("torch.manual_seed(0)\n", "")
    unseeded = {"kind": "factory", "factory": f"{write_model(tmp_path, 'unseeded', unseeded_source)}:make_vae"}
    assert load_encoder(seeded).weights_sha256 == load_encoder(seeded).weights_sha256
    first = load_encoder(unseeded).weights_sha256
    assert load_encoder(unseeded).weights_sha256 != first
    # the driver's check builds it twice and refuses it before Ray starts (exit 2) ...
    probe = dict(sample_rate=None, channels=None, is_discrete=False, storage_options=None, precision="fp32")
    with pytest.raises(ModelLoadError, match=r"unseeded.py:make_vae builds other weights each time it is called"):
        probe_encoder(unseeded, sample_size=640, **probe)
    assert probe_encoder(seeded, sample_size=640, **probe)["weights_sha256"] == load_encoder(seeded).weights_sha256
    # ... and an actor whose model is not the one the driver checked stops before it encodes anything
    with pytest.raises(ModelLoadError, match=r"other weights than the one the driver checked .*seed its initial"):
        EncodeStage(model=unseeded, sample_size=640, weights_sha256=load_encoder(unseeded).weights_sha256)
    EncodeStage(model=seeded, sample_size=640, weights_sha256=load_encoder(seeded).weights_sha256)


def test_a_model_that_cannot_take_silence_passes_the_drivers_probe(tmp_path):
    """The driver probed with all zeros: a model dividing by its input's peak, fine on every real window
    (and ``silence_db`` can keep silent ones away), was refused before the run, exit 2."""
    source = IDENTITY_MODEL.replace(
        "        return audio.clone()",
        "        if bool((audio.abs().amax(-1) == 0).any()):\n"
        "            raise ValueError('cannot normalise silence')\n"
        "        return audio / audio.abs().amax(-1, keepdim=True)",
    )
    model = {"kind": "factory", "factory": f"{write_model(tmp_path, 'peak', source)}:make_identity"}
    probe = dict(sample_rate=None, channels=None, is_discrete=False, storage_options=None, precision="fp32")
    info = probe_encoder(model, sample_size=64, **probe)
    assert (info["sample_rate"], info["channels"], info["latent_channels"]) == (16000, 1, 1)
    stage = EncodeStage(model=model, sample_size=64, sample_rate=16000, audio_channels=1)
    audio = np.stack([np.zeros((1, 64)), np.full((1, 64), 0.25)]).astype(np.float32)
    out = stage(batch_of(audio, [64, 64]))
    assert out["error"][0] == "encode failed: ValueError: cannot normalise silence"
    assert out["error"][1] == "" and np.allclose(out["latents"][1], 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stage_on_cuda_in_fp16_matches_the_cpu():
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal((4, 2, 4096))).astype(np.float32)
    kwargs = dict(model=SMALL_BUILTIN, sample_size=4096, seed=1, batch_size=4)
    cpu = EncodeStage(**kwargs, device="cpu")(batch_of(audio, [4096, 3000, 100, 4096]))
    stage = EncodeStage(**kwargs, precision="fp16")
    assert stage.device.type == "cuda" and stage.micro_batch == 4
    gpu = stage(batch_of(audio, [4096, 3000, 100, 4096]))
    assert gpu["latents"].dtype == np.float16 and np.array_equal(gpu["padding_mask"], cpu["padding_mask"])
    assert np.abs(gpu["latents"].astype(np.float32) - cpu["latents"]).max() < 0.05


def test_stage_turns_model_failures_into_error_rows(tmp_path):
    factory = f"{write_model(tmp_path, 'identity', IDENTITY_MODEL)}:make_identity"
    stage = EncodeStage(
        model={"kind": "factory", "factory": factory}, sample_size=64, sample_rate=16000, audio_channels=1, batch_size=4
    )
    audio = np.ones((4, 1, 64), dtype=np.float32)
    audio[1] *= 1000.0
    audio[3] *= 10000.0
    batch = batch_of(audio, [64, 64, 0, 64])
    batch["error"][0] = "undecodable: not audio"
    out = stage(batch)
    assert out["error"][0] == "undecodable: not audio"
    assert out["error"][1] == "encode failed: ValueError: audio out of range"
    assert out["error"][2] == "empty window: no audio samples in it"
    # the device's fault, not the window's: retried by the next run (it was failed for good, exit 0)
    assert out["error"][3] == "device: encode failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert [is_retryable(e) for e in out["error"]] == [False, False, False, True]
    assert not out["latents"].any() and not out["padding_mask"].any()


def test_a_gpu_out_of_memory_under_a_teachers_or_scorers_failure_is_the_devices():
    from ray_pipelines.stages.rows import model_failure
    from ray_pipelines.stages.teacher import TeacherFailed

    try:
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB")
        except RuntimeError as e:
            raise TeacherFailed("crepe", e) from e
    except TeacherFailed as wrapped:
        reason = model_failure("teacher", wrapped)
    assert reason.startswith("device: teacher failed: crepe: RuntimeError: CUDA out of memory")
    # TorchScript's interpreter keeps only the text of what was raised in it
    scripted = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript code:\n...\n"
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
    )
    assert model_failure("encode", scripted).startswith("device: encode failed: ")
    # what follows the input stays final: retried, it would fail every run again
    for error in (
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input."),
        ValueError("nan in input"),
    ):
        assert not is_retryable(model_failure("score", error, lambda e: f"dnsmos: {e}"))
    assert model_failure("score", ValueError("nan in input"), lambda e: f"dnsmos: {e}") == (
        "score failed: dnsmos: nan in input"
    )


# ---- output naming and the reader --------------------------------------------------------


def test_sample_ids_are_stable_13_digit_hashes_and_cleanup_knows_sample_files():
    ids = {sample_id(f"dir/file{i}.flac", w) for i in range(50) for w in range(4)}
    assert len(ids) == 200 and all(len(i) == 13 and i.isdigit() for i in ids)
    assert sample_id("a.flac", 0) == sample_id("a.flac", 0) != sample_id("a.flac", 1)
    assert is_sample_file("0/0123456789012.npy") and is_sample_file("12/0123456789012.json")
    assert is_sample_file("3/0123456789012.npy.tmp-123-456")
    for other in ("details.json", "filelist.txt", "manifest.json", "0/123.npy", "0/0123456789012.txt"):
        assert not is_sample_file(other) and not is_encode_data_file(other)
    assert is_encode_data_file("part-abc.parquet")
    files = [
        {"path": "0/1111111111111.npy", "key": "a", "window": 0},
        {"path": "1/1111111111111.npy", "key": "b", "window": 0},
        {"path": "1/2222222222222.npy", "key": "c", "window": 0},
    ]
    assert [c["id"] for c in id_collisions(files)] == ["1111111111111"]


def test_filelist_lists_each_window_once(tmp_path):
    from ray_pipelines.storage import Storage

    files = [
        {"path": "3/1111111111111.npy", "key": "a", "window": 0},
        {"path": "0/1111111111111.npy", "key": "a", "window": 0},  # the same window, twice committed
        {"path": "0/1111111111111.json"},
        {"path": "0/2222222222222.npy", "key": "b", "window": 1},
        {"path": "part-x.parquet"},
    ]
    assert write_filelist(Storage(str(tmp_path)), files) == ["0/1111111111111.npy", "0/2222222222222.npy"]
    assert (tmp_path / "filelist.txt").read_text() == "0/1111111111111.npy\n0/2222222222222.npy\n"


def test_crop_keeps_a_real_frame_and_pads_short_latents():
    latents = np.arange(20, dtype=np.float32).reshape(1, 20)
    mask = np.array([1] * 5 + [0] * 15, dtype=np.uint8)
    starts = set()
    for seed in range(200):
        cropped, m, start = crop_latents(latents, mask, 8, derive_seed(0, "crop test", seed))
        assert cropped.shape == (1, 8) and m.any() and np.array_equal(cropped[0], latents[0, start : start + 8])
        starts.add(start)
    assert starts == set(range(5))  # every start that keeps a real frame, and only those
    assert crop_latents(latents, mask, 8)[2] == 0
    padded, m, start = crop_latents(latents, mask, 25)
    assert padded.shape == (1, 25) and m.tolist() == mask.tolist() + [0] * 5 and start == 0


def test_limit_batches_and_shuffle_pick_the_inputs(tmp_path):
    for i in range(6):
        (tmp_path / f"clip{i}.wav").write_bytes(b"RIFF")

    def keys(**settings):
        cfg = validate_config(
            EncodeConfig,
            {
                "input": str(tmp_path),
                "output": str(tmp_path / "out"),
                "model": SMALL_BUILTIN,
                "sample_size": 512,
                **settings,
            },
        )
        return sorted(select_inputs(EncodeJob(cfg))["key"].to_pylist())  # what a run takes

    assert keys(limit_batches=2, batch_size=2) == ["clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav"]
    shuffled = keys(limit_batches=1, batch_size=3, shuffle=True)
    assert len(shuffled) == 3 and shuffled == keys(limit_batches=1, batch_size=3, shuffle=True)
    assert {tuple(keys(limit=3, shuffle=True, seed=s)) for s in range(6)} != {("clip0.wav", "clip1.wav", "clip2.wav")}
    assert keys() == [f"clip{i}.wav" for i in range(6)]


def test_a_batchs_consecutive_rows_go_to_the_model_as_a_view_others_as_a_copy():
    from ray_pipelines.stages.rows import take_rows

    audio = np.arange(24, dtype=np.float32).reshape(6, 4)
    every = take_rows(audio, np.arange(6))
    assert np.shares_memory(every, audio) and every.tolist() == audio.tolist()
    middle = take_rows(audio, np.array([2, 3, 4]))
    assert np.shares_memory(middle, audio) and middle.tolist() == audio[2:5].tolist()
    gapped = take_rows(audio, np.array([0, 2, 5]))
    assert not np.shares_memory(gapped, audio) and gapped.tolist() == audio[[0, 2, 5]].tolist()
    assert take_rows(audio, np.array([], dtype=np.int64)).shape == (0, 4)


def test_a_model_call_that_raises_on_a_batch_is_run_again_row_by_row():
    from ray_pipelines.stages.rows import run_else_row_by_row

    calls = []

    def run(rows):
        calls.append(rows.tolist())
        if 3 in rows or 5 in rows:
            raise ValueError(f"bad clip among {rows.tolist()}")
        return [row * 10 for row in rows]

    parts = run_else_row_by_row(run, np.array([2, 3, 4, 5]), lambda error: f"failed: {error}")
    assert [(rows.tolist(), result) for rows, result in parts] == [
        ([2], [20]),
        ([3], "failed: bad clip among [3]"),
        ([4], [40]),
        ([5], "failed: bad clip among [5]"),
    ]
    assert calls == [[2, 3, 4, 5], [2], [3], [4], [5]]
    # A batch that runs is one call; only the failure named is caught.
    assert [r.tolist() for r, _ in run_else_row_by_row(run, np.array([0, 1]), str)] == [[0, 1]]
    with pytest.raises(ValueError, match="bad clip"):
        run_else_row_by_row(run, np.array([3, 4]), str, failure=KeyError)
