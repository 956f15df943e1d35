"""The encode stage: padded windows of audio -> latents (or tokens), padding mask and metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..encoders.base import Encoder, ModelLoadError
from ..encoders.functional import posterior_noise, sample_posterior
from ..encoders.loading import load_encoder, stored_dtype
from ..error_text import describe
from ..padding import latent_padding_mask
from .device import pick_device
from .rows import failure_reason, float_rows, run_else_row_by_row

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def window_metadata(
    start_seconds: np.ndarray, file_seconds: np.ndarray, sample_size: int, sample_rate: int
) -> dict[str, np.ndarray]:
    """stable-audio-tools' per-sample metadata for windows of ``sample_size`` samples.

    ``seconds_start = floor(start)``, ``seconds_total = ceil(file length)`` (whole
    seconds, as its dataset writes them) and ``timestamps = [start, end]`` as
    fractions of ``max(file length, sample_size)`` (its PadCrop convention).
    """
    start_seconds = np.asarray(start_seconds, dtype=np.float64)
    file_seconds = np.asarray(file_seconds, dtype=np.float64)
    start = np.round(start_seconds * sample_rate)
    total = np.maximum(np.round(file_seconds * sample_rate), sample_size)
    timestamps = np.stack([start / total, np.minimum(start + sample_size, total) / total], axis=1)
    return {
        "seconds_start": np.floor(start_seconds + 1e-9).astype(np.int64),
        "seconds_total": np.ceil(file_seconds - 1e-9).astype(np.int64),
        "timestamps": timestamps,
    }


class EncodeStage:
    """``{"key", "window", "audio" [B, C, T], "valid_samples", "error", ...}`` -> ``latents [B, D, N]`` + mask.

    Tokens are stored ``[Q, N]`` whatever order the model returns them in
    (``frames_axis``, found by ``inspect_encoder`` on the driver), in the
    narrowest integer type that holds ``codebook_size``; a token outside
    ``[0, codebook_size)`` makes its row an error row.

    The model is loaded once per actor, moved to ``cuda`` when the actor has a
    GPU, and cast to fp16 (``precision="fp16"``, pre_encode's ``model_half``) or
    bf16. On CUDA rows are encoded ``batch_size`` at a time; on CPU one at a
    time, so every row's bytes are independent of how rows were batched (CPU
    convolution kernels differ by batch size in the last bit; the speed is the
    same). With ``clamp`` the audio is clamped to [-1, 1] right before the model, as
    stable-audio-tools' ``SampleDataset`` does for ``pre_encode.py``.
    A VAE's posterior is sampled with noise drawn per (seed, key, window),
    or its mean is taken. A row the model fails on, or whose latents are not
    finite, becomes an error row; the others go on.
    """

    def __init__(
        self,
        *,
        model: dict[str, Any],
        sample_size: int,
        seed: int = 0,
        sample_rate: int | None = None,
        audio_channels: int | None = None,
        is_discrete: bool = False,
        sample_posterior: bool = True,
        clamp: bool = False,
        precision: str = "fp32",
        batch_size: int = 1,
        frames_axis: int = 2,
        storage_options: dict[str, Any] | None = None,
        device: str | None = None,
        weights_sha256: str | None = None,
    ):
        self.device = pick_device(device)
        loaded = load_encoder(
            model,
            sample_rate=sample_rate,
            channels=audio_channels,
            is_discrete=is_discrete,
            storage_options=storage_options,
        )
        if weights_sha256 is not None and loaded.weights_sha256 != weights_sha256:
            raise ModelLoadError(
                f"the model built here has other weights than the one the driver checked (sha256 "
                f"{loaded.weights_sha256[:12]}, not {weights_sha256[:12]}): its latents would be another model's. "
                "A factory without a checkpoint must build the same weights every time "
                "(seed its initialisation, or give model.checkpoint)"
            )
        self.encoder: Encoder = loaded.encoder
        self.dtype = PRECISIONS[precision]
        self.encoder.to(device=self.device, dtype=self.dtype)
        self.sample_size = sample_size
        self.seed = seed
        self.is_discrete = is_discrete
        self.sample_posterior = sample_posterior and not is_discrete and self.encoder.has_posterior
        self.clamp = clamp
        self.frames_axis = frames_axis
        self.codebook_size = self.encoder.codebook_size if is_discrete else None
        self.out_dtype = stored_dtype(is_discrete, self.codebook_size, precision)
        self.micro_batch = max(1, batch_size) if self.device.type == "cuda" else 1
        self.sample_rate = self.encoder.sample_rate
        self.ratio = self.encoder.downsampling_ratio
        self._latent_shape: tuple[int, int] | None = None

    # ---- the model --------------------------------------------------------------
    def encode(self, audio: torch.Tensor, keys: list[str], windows: list[int]) -> torch.Tensor:
        """``[b, C, T]`` -> ``[b, D, N]`` on the CPU: latents in float32 (or tokens ``[b, Q, N]`` in int64)."""
        if self.clamp:  # as stable-audio-tools' dataset does for pre_encode (hot float files, resampled peaks)
            audio = audio.clamp(-1.0, 1.0)
        x = audio.to(self.device, self.dtype, non_blocking=True)
        with torch.inference_mode():
            if self.sample_posterior:
                mean, std = self.encoder.posterior(x)
                z = sample_posterior(mean, std, posterior_noise(self.seed, keys, windows, tuple(mean.shape[1:])))
            else:
                z = self.encoder.encode(x)
        if self.frames_axis == -1:  # one codebook: [b, N]
            z = z[:, None, :]
        elif self.frames_axis == 1:  # [b, N, Q]
            z = z.transpose(1, 2)
        if self.is_discrete:
            return z.to(torch.int64).cpu()
        return z.float().cpu()

    def latent_shape(self) -> tuple[int, int]:
        """``(D, N)`` for a full window (probed once when no row has been encoded yet)."""
        if self._latent_shape is None:
            z = self.encode(torch.zeros(1, self.encoder.channels, self.sample_size), ["probe"], [0])
            self._latent_shape = tuple(z.shape[1:])
        return self._latent_shape

    def _stored(self, row: np.ndarray) -> np.ndarray | str:
        """A row's latents (or tokens) in the output dtype, or why they cannot be stored."""
        if self.is_discrete and self.codebook_size is not None and (row.min() < 0 or row.max() >= self.codebook_size):
            return f"tokens outside the codebook [0, {self.codebook_size}): {row.min()} .. {row.max()}"
        if not self.is_discrete and not np.isfinite(row).all():
            return "non-finite latents: the model produced NaN/inf" + (
                " (fp16 overflow? try bf16)" if self.dtype == torch.float16 else ""
            )
        value = row.astype(self.out_dtype)
        if self.out_dtype == np.float16 and not np.isfinite(value).all():
            return "non-finite latents: values overflow float16; try bf16 (stored as float32)"
        return value

    def _encode_rows(
        self, audio: np.ndarray, rows: np.ndarray, keys: list[str], windows: list[int]
    ) -> dict[int, np.ndarray | str]:
        """Per row of ``audio[rows]``: latents ``[D, N]`` in the output dtype, or an error reason."""

        def encode(part: np.ndarray) -> torch.Tensor:
            return self.encode(float_rows(audio, part), [keys[i] for i in part], [windows[i] for i in part])

        out: dict[int, np.ndarray | str] = {}
        for part, z in run_else_row_by_row(encode, rows, failure_reason("encode", self.device, describe)):
            if isinstance(z, str):
                out[int(part[0])] = z
                continue
            self._latent_shape = tuple(z.shape[1:])
            for i, row in zip(part, z.numpy()):
                out[int(i)] = self._stored(row)
        return out

    # ---- the batch ----------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        if audio.ndim == 2:  # mono decoded as [B, T]
            audio = audio[:, None, :]
        n = len(audio)
        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        valid = np.asarray(batch["valid_samples"], dtype=np.int64)
        empty = (errors == "") & (valid <= 0)
        errors[empty] = "empty window: no audio samples in it"
        keys = [str(k) for k in batch["key"]]
        windows = [int(w) for w in batch["window"]]

        results: dict[int, np.ndarray] = {}
        todo = np.flatnonzero(errors == "")
        for start in range(0, len(todo), self.micro_batch):
            for i, value in self._encode_rows(audio, todo[start : start + self.micro_batch], keys, windows).items():
                if isinstance(value, str):
                    errors[i] = value
                else:
                    results[i] = value

        dims, frames = self.latent_shape()
        latents = np.zeros((n, dims, frames), dtype=self.out_dtype)
        for i, value in results.items():
            latents[i] = value
        mask = latent_padding_mask(np.where(errors == "", valid, 0), self.ratio, frames)
        batch.update(window_metadata(batch["start_seconds"], batch["file_seconds"], self.sample_size, self.sample_rate))
        batch["latents"] = latents
        batch["padding_mask"] = mask
        batch["error"] = errors
        batch["sample_rate"] = np.full(n, self.sample_rate, dtype=np.int64)
        batch["path"] = np.array([str(s) for s in batch["source"]], dtype=object)
        batch["relpath"] = np.array(keys, dtype=object)
        return batch
