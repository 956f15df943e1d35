"""The augment stage: two independently augmented log-mel views per (clip, version)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..augment.params import DRAWS_COLUMN, VALID_COLUMN
from ..augment.pool import AugmentationPool, SpectrogramPoolConfig, ViewDraws, WaveformPoolConfig
from ..spectrogram import LogMelSpectrogram
from .device import pick_device
from .rows import float_rows, non_finite_rows, take_rows


class AugmentStage:
    """``{"key", "version", "audio" [B, T], "error", ...}`` -> ``view1``, ``view2`` ``[B, 1, n_mels, frames]``.

    Each view's randomness comes from ``(seed, key, version, view)`` alone: its
    parameters arrive drawn in column ``view_draws`` (the job draws them in its
    decode tasks, many at once on the CPUs, so the one process feeding the GPU
    does not), or are drawn here when the column is absent. On CUDA the whole
    batch is augmented at once; on CPU views are processed one at a time (the
    same speed there), which makes every view's bytes independent of how rows
    were grouped into batches.
    """

    def __init__(
        self,
        *,
        seed: int,
        sample_rate: int,
        duration: float,
        n_mels: int,
        n_fft: int,
        hop_length: int,
        f_min: float,
        f_max: float | None,
        top_db: float | None,
        num_waveform_augs: int,
        num_spectrogram_augs: int,
        waveform_pool: dict[str, Any],
        spectrogram_pool: dict[str, Any],
        dtype: str = "float32",
        device: str | None = None,
    ):
        self.seed = seed
        self.device = pick_device(device)
        self.num_samples = int(round(duration * sample_rate))
        self.mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, top_db).to(self.device)
        self.frames = self.mel.frames(self.num_samples)
        self.freqs = self.mel.frequencies()
        self.n_mels = n_mels
        self.pool = AugmentationPool(
            WaveformPoolConfig.model_validate(waveform_pool),
            SpectrogramPoolConfig.model_validate(spectrogram_pool),
            num_waveform_augs,
            num_spectrogram_augs,
            sample_rate,
            self.num_samples,
            n_mels,
            self.frames,
        )
        self.out_dtype = np.dtype(dtype)
        self.out_torch_dtype = torch.from_numpy(np.zeros(0, self.out_dtype)).dtype
        self.micro_batch = None if self.device.type == "cuda" else 1

    @property
    def view_shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)

    def draws(self, keys: list[str], versions: list[int]) -> np.ndarray:
        """``[B, 2, PACKED_WIDTH]``: both views' draws of each row, as the job's decode tasks
        make them (column ``view_draws``) so that the stage's actor does not."""
        return np.stack([self.pool.draw_views(self.seed, key, version) for key, version in zip(keys, versions)])

    def augment(
        self, audio: torch.Tensor, draws: np.ndarray, valid: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of every row of ``audio [B, T]`` (``draws [B, 2, PACKED_WIDTH]``);
        returns two ``[B, n_mels, frames]`` tensors. ``valid [B]``: each row's samples of audio, the rest
        zero padding (a time mask never hides all of a short clip's frames; None: every row is all audio)."""
        views = ViewDraws.unpack(np.concatenate([draws[:, 0], draws[:, 1]]))  # every view 1, then every view 2
        if valid is not None:
            views = self.pool.spare_audio(views, np.concatenate([valid, valid]), self.mel.hop_length)
        stacked = torch.cat([audio, audio], dim=0)
        step = self.micro_batch or len(views)
        specs = []
        with torch.inference_mode():
            for start in range(0, len(views), step):
                part = views.take(slice(start, start + step))
                wave = self.pool.apply_signal(stacked[start : start + step], part)
                power = self.pool.apply_spectral(self.mel.power(wave), part, self.freqs)
                specs.append(self.pool.apply_masks(self.mel.from_power(power), part))
        spec = torch.cat(specs, dim=0) if len(specs) > 1 else specs[0]
        return spec[: len(audio)], spec[len(audio) :]

    def _outputs(self, n: int, every: bool) -> list[torch.Tensor]:
        """Two host tensors for the views of ``n`` rows. All rows good on CUDA: pinned memory
        (torch's caching host allocator hands it back once Ray is done with a batch), which the
        copies from the device fill at full speed, where fresh pageable memory took a page fault
        per 4 KB; else plain memory, zeroed where some rows stay empty (error rows)."""
        shape = (n, *self.view_shape)
        if every:
            pinned = self.device.type == "cuda"
            return [torch.empty(shape, dtype=self.out_torch_dtype, pin_memory=pinned) for _ in range(2)]
        return [torch.zeros(shape, dtype=self.out_torch_dtype) for _ in range(2)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        draws = batch.pop(DRAWS_COLUMN, None)
        valid = batch.pop(VALID_COLUMN, None)
        ok = np.flatnonzero(batch["error"] == "")
        every = len(ok) == len(audio)
        outputs = self._outputs(len(audio), every)
        if len(ok):
            tensor = float_rows(audio, ok).to(self.device)
            if draws is None:
                draws = self.draws([str(k) for k in batch["key"][ok]], batch["version"][ok].tolist())
            else:
                draws = take_rows(draws, ok)
            valid = None if valid is None else np.asarray(valid, dtype=np.int64)[ok]
            for out, view in zip(outputs, self.augment(tensor, draws, valid)):
                view = view.to(self.out_torch_dtype)
                if every:
                    out[:, 0].copy_(view, non_blocking=True)  # straight into the returned memory
                else:
                    out[torch.from_numpy(ok), 0] = view.cpu()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # the copies into pinned memory
        batch["view1"], batch["view2"] = (out.numpy() for out in outputs)
        batch["error"] = non_finite_rows(batch["error"], ok, audio, batch["view1"], batch["view2"])
        return batch
