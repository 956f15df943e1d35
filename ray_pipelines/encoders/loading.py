"""Load any configured encoder behind the :class:`Encoder` interface, and inspect it.

``load_encoder`` runs once per actor (and once on the driver, which also
probes the model with a short quiet input to learn its output layout and
channels and check that continuous/discrete matches the config before any
work starts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..error_text import describe
from ..models import (
    build_from_factory,
    factory_code_sha256,
    load_state_dict,
    load_torchscript,
    model_classes,
    probe_audio,
    read_model_file,
    weights_sha256,
)
from .base import Encoder, ModelLoadError, ModuleEncoder
from .config import ModelConfig
from .info import ModelInfo
from .reference import ReferenceAutoencoder


@dataclass(frozen=True)
class LoadedEncoder:
    encoder: Encoder
    weights_sha256: str  # what the weights are (enters the job's config fingerprint)
    code_sha256: str = ""  # a factory's code (enters it too; model_files.factory_code_sha256)


def load_encoder(
    model: ModelConfig | dict[str, Any],
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    is_discrete: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> LoadedEncoder:
    """Build the encoder ``model`` describes (on the CPU, in eval mode, no grads).

    ``sample_rate``/``channels`` (the job's ``sample_rate``/``audio_channels``)
    fill in what the model does not declare and must agree with what it does. ``model`` may be the
    config as a dict (what the job hands its actors and the driver's model check).
    """
    model = ModelConfig.model_validate(model) if isinstance(model, dict) else model
    digest = hashlib.sha256()
    code_sha256 = ""  # a factory's code (a TorchScript file's is in its bytes, hashed as its weights)

    def as_encoder(module: torch.nn.Module, name: str) -> ModuleEncoder:
        """A plain module as an encoder, with what the config says the module does not declare."""
        return ModuleEncoder(
            module,
            sample_rate=sample_rate,
            channels=channels,
            downsampling_ratio=model.downsampling_ratio,
            is_discrete=is_discrete,
            name=name,
        )

    if model.kind == "builtin":
        if is_discrete:
            raise ModelLoadError(
                "is_discrete: the built-in reference model is a continuous VAE; "
                "set is_discrete: false or load a discrete model"
            )
        encoder: Encoder = ReferenceAutoencoder(model.builtin)
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    elif model.kind == "torchscript":
        data = read_model_file(model.path, storage_options, key="model.path")
        digest.update(data)
        encoder = as_encoder(load_torchscript(data, model.path), f"the TorchScript model {model.path}")
    elif model.kind == "factory":
        checkpoint = (
            read_model_file(model.checkpoint, storage_options, key="model.checkpoint") if model.checkpoint else None
        )
        digest.update(model.factory.encode())
        state = load_state_dict(checkpoint, model.checkpoint) if checkpoint is not None else None
        module = build_from_factory(model.factory, model.factory_kwargs, state, model.checkpoint or "")
        # Without a checkpoint the weights are whatever the factory built (a download, a seeded or an
        # unseeded initialisation): hash them, not the factory's name (EncodeStage compares its own).
        digest.update(checkpoint if checkpoint is not None else weights_sha256(module).encode())
        code_sha256 = factory_code_sha256(model.factory, model_classes(module))  # edited code: a new output
        name = f"the model from {model.factory}"
        if isinstance(module, Encoder):
            encoder = _fill_from_config(module, name, sample_rate, channels, model.downsampling_ratio)
        else:
            encoder = as_encoder(module, name)
    elif model.kind == "stable-audio-tools":
        from .stable_audio import import_factory, load_stable_audio

        import_factory()  # fail on a missing package before reading a large checkpoint
        config_data = read_model_file(model.path, storage_options, key="model.path")
        checkpoint = read_model_file(model.checkpoint, storage_options, key="model.checkpoint")
        digest.update(config_data)
        digest.update(checkpoint)
        encoder = load_stable_audio(config_data, model.path, checkpoint, model.checkpoint)
        if encoder.is_discrete != is_discrete:
            raise ModelLoadError(
                f"is_discrete: the config says {is_discrete} but the model's bottleneck is "
                f"{'discrete' if encoder.is_discrete else 'continuous'}"
            )
    else:  # pragma: no cover - the config's Literal keeps this out
        raise ModelLoadError(f"unknown model.kind {model.kind!r}")
    _check_agrees(encoder, sample_rate, channels, model.downsampling_ratio)
    if is_discrete and model.codebook_size is not None:
        if encoder.codebook_size not in (None, model.codebook_size):
            raise ModelLoadError(
                f"model.codebook_size: the config says {model.codebook_size} but the model declares "
                f"codebook_size = {encoder.codebook_size}; remove model.codebook_size or fix it"
            )
        encoder.codebook_size = model.codebook_size
    encoder.eval().requires_grad_(False)
    return LoadedEncoder(encoder, digest.hexdigest(), code_sha256)


def _fill_from_config(
    encoder: Encoder, name: str, sample_rate: int | None, channels: int | None, downsampling_ratio: int | None
) -> Encoder:
    """An :class:`Encoder` subclass given, as a plain module is (``ModuleEncoder``), the attributes it does not
    set from the config; one that neither gives is a config error. Values given in both are checked after."""
    for attribute, key, configured in (
        ("sample_rate", "sample_rate", sample_rate),
        ("channels", "audio_channels", channels),
        ("downsampling_ratio", "model.downsampling_ratio", downsampling_ratio),
    ):
        if getattr(encoder, attribute, None) is not None:
            continue
        if configured is None:
            raise ModelLoadError(f"{key}: {name} does not declare {attribute}; set {key} in the config")
        setattr(encoder, attribute, configured)
    return encoder


def _check_agrees(
    encoder: Encoder, sample_rate: int | None, channels: int | None, downsampling_ratio: int | None
) -> None:
    for key, configured, declared in (
        ("sample_rate", sample_rate, encoder.sample_rate),
        ("audio_channels", channels, encoder.channels),
        ("model.downsampling_ratio", downsampling_ratio, encoder.downsampling_ratio),
    ):
        if configured is not None and configured != declared:
            raise ModelLoadError(
                f"{key}: the config says {configured} but the model takes {declared}; "
                f"remove {key} from the config (it comes from the model) or fix it"
            )


def token_dtype(codebook_size: int | None) -> np.dtype:
    """The narrowest integer type that holds tokens ``0 .. codebook_size - 1`` (int64 when unknown).
    uint8 up to 256 codes; above that signed types (torch has no uint16/uint32 arithmetic)."""
    if codebook_size is None:
        return np.dtype(np.int64)
    for dtype in (np.uint8, np.int16, np.int32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def stored_dtype(is_discrete: bool, codebook_size: int | None, precision: str) -> np.dtype:
    """What the output holds: tokens in :func:`token_dtype`, latents in float16 for fp16 (pre_encode's
    model_half), else float32 (NumPy has no bfloat16)."""
    if is_discrete:
        return token_dtype(codebook_size)
    return np.dtype(np.float16 if precision == "fp16" else np.float32)


def frames_axis(shape: tuple[int, ...], frames: int) -> int | None:
    """Which axis of a ``[B, ., .]`` (or ``[B, N]``) output holds ``frames`` latent frames:
    2 or 1, -1 for ``[B, N]``; None when neither or both do."""
    if len(shape) == 2:
        return -1 if shape[1] == frames else None
    matching = [axis for axis in (1, 2) if shape[axis] == frames]
    return matching[0] if len(matching) == 1 else None


def _probe(encoder: Encoder, length: int) -> torch.Tensor:
    try:
        with torch.inference_mode():
            return encoder.encode(probe_audio(1, encoder.channels, length))
    except Exception as e:
        raise ModelLoadError(
            f"the model failed on a probe input [1, {encoder.channels}, {length}] (quiet noise): {describe(e)}"
            + encoder.forward_note()
        ) from None


def inspect_encoder(
    loaded: LoadedEncoder, *, sample_size: int, is_discrete: bool, precision: str = "fp32"
) -> ModelInfo:
    """Probe ``encode`` on short quiet inputs (seeded noise) and check it against the config.

    The frame axis is found from the frame count the downsampling ratio gives
    (``length / ratio``): ``[B, D, N]``, ``[B, N, Q]`` (stable-audio-tools' RVQ
    bottlenecks) or ``[B, N]`` (one codebook). When both axes have that many
    (Q = N), a second probe one frame shorter tells them apart; a model that
    still leaves it open, or whose output has no axis of N frames, is refused.
    """
    encoder = loaded.encoder
    ratio = encoder.downsampling_ratio
    if sample_size % ratio:
        below, above = sample_size // ratio * ratio, (sample_size // ratio + 1) * ratio
        raise ModelLoadError(
            f"sample_size: {sample_size} is not a multiple of the model's downsampling ratio "
            f"{ratio}; use {below or above} or {above}"
        )
    frames = min(sample_size // ratio, 16)
    out = _probe(encoder, frames * ratio)
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim not in (2, 3)
        or out.shape[0] != 1
        or (out.ndim == 2 and not is_discrete)
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"the model's encode must return [B, D, N]; it returned {shape} for [1, C, T]" + encoder.forward_note()
        )
    axis = frames_axis(tuple(out.shape), frames)
    if axis is None and out.ndim == 3 and out.shape[1] == out.shape[2] == frames and frames > 1:
        shorter = _probe(encoder, (frames - 1) * ratio)  # Q = N here: one frame fewer tells them apart
        axis = frames_axis(tuple(shorter.shape), frames - 1)
    if axis is None:
        raise ModelLoadError(
            f"cannot tell the model's frame axis: for {frames * ratio} samples (downsampling ratio {ratio}, "
            f"so {frames} frames) encode returned {tuple(out.shape)}, "
            + (
                "and both axes kept that length"
                if out.ndim == 3 and out.shape[1] == out.shape[2] == frames
                else "no axis of that length"
            )
            + "; check model.downsampling_ratio"
            + encoder.forward_note()
        )
    integer = not (out.dtype.is_floating_point or out.dtype.is_complex)
    if is_discrete and not integer:
        raise ModelLoadError(f"is_discrete: true, but the model returns {out.dtype} latents, not integer tokens")
    if not is_discrete and integer:
        raise ModelLoadError(f"the model returns integer tokens ({out.dtype}); set is_discrete: true")
    channels = 1 if axis == -1 else int(out.shape[3 - axis])
    return ModelInfo(
        sample_rate=encoder.sample_rate,
        channels=encoder.channels,
        downsampling_ratio=ratio,
        is_discrete=is_discrete,
        has_posterior=encoder.has_posterior,
        latent_channels=channels,
        latent_frames=sample_size // ratio,
        frames_axis=axis,
        codebook_size=encoder.codebook_size if is_discrete else None,
        output_dtype=str(out.dtype).replace("torch.", ""),
        stored_dtype=stored_dtype(is_discrete, encoder.codebook_size, precision).name,
        weights_sha256=loaded.weights_sha256,
        description=encoder.describe(),
        code_sha256=loaded.code_sha256,
    )


def probe_encoder(
    model: dict[str, Any],
    *,
    sample_rate: int | None,
    channels: int | None,
    is_discrete: bool,
    storage_options: dict[str, Any] | None,
    sample_size: int,
    precision: str,
) -> dict[str, Any]:
    """:func:`load_encoder` then :func:`inspect_encoder`, as JSON values (``ModelInfo.as_dict``): what the
    encode job's driver learns about its model, in a child process (``ray_pipelines.isolated``)."""

    def load() -> LoadedEncoder:
        return load_encoder(
            model, sample_rate=sample_rate, channels=channels, is_discrete=is_discrete, storage_options=storage_options
        )

    loaded = load()
    config = ModelConfig.model_validate(model)
    if config.kind == "factory" and config.checkpoint is None and load().weights_sha256 != loaded.weights_sha256:
        # Built twice here, so that the run is refused before Ray starts (each actor checks it too).
        raise ModelLoadError(
            f"model.factory {config.factory} builds other weights each time it is called: every actor would "
            "encode with another model. Seed its initialisation, or give model.checkpoint"
        )
    return inspect_encoder(loaded, sample_size=sample_size, is_discrete=is_discrete, precision=precision).as_dict()
