"""The features stage: 16 kHz snippets -> AST input values ``[max_length, n_mels]``."""

from __future__ import annotations

import numpy as np
import torch

from ..features.kaldi import AST_MEAN, AST_STD, ASTFeatures, frame_sizes
from .device import pick_device
from .rows import float_rows, non_finite_rows


class FeaturesStage:
    """``{"audio" [B, T], "valid_samples" [B], "error", ...}`` -> ``input_values [B, max_length, n_mels]``.

    ``valid_samples`` says how much of a snippet is real audio (a song shorter
    than one snippet is padded by the decoder): features come from the real
    part only and are padded with zero frames, as the AST feature extractor
    does for short audio. Error rows get zeros (the sink drops them).

    On CPU every snippet is computed on its own, so its bytes never depend on
    which rows shared its batch; on CUDA the full-length snippets of a batch
    go through at once.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_mels: int = 128,
        max_length: int = 1024,
        normalize: bool = True,
        mean: float = AST_MEAN,
        std: float = AST_STD,
        device: str | None = None,
    ):
        self.device = pick_device(device)
        self.features = ASTFeatures(sample_rate, n_mels, max_length, normalize, mean, std).to(self.device)
        self.shape = (max_length, n_mels)
        self.frame_size, _, _ = frame_sizes(sample_rate)

    def compute_into(self, values: np.ndarray, audio: np.ndarray, valid: np.ndarray, rows: np.ndarray) -> None:
        """Features of ``audio[rows]`` written to ``values[rows]``, given each row's real length
        ``valid``. Straight into the output: no second batch-sized buffer to fill and copy."""
        with torch.inference_mode():
            pending = rows
            if self.device.type == "cuda":  # full-length rows go through as one batch
                whole = valid[rows] >= audio.shape[-1]
                full, pending = rows[whole], rows[~whole]
                if len(full):
                    values[full] = self.features(float_rows(audio, full).to(self.device)).cpu().numpy()
            for i in pending:
                wave = torch.from_numpy(np.ascontiguousarray(audio[i], dtype=np.float32)).to(self.device)
                values[i] = self.features(wave, int(valid[i])).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        valid = batch.pop("valid_samples", None)
        valid = np.full(len(audio), audio.shape[-1]) if valid is None else valid.astype(np.int64)
        values = np.zeros((len(audio), *self.shape), dtype=np.float32)
        errors = batch["error"].astype(object).copy()
        # The seed rule's last snippets of a song under about 0.15 s hold less than a frame of it: a row of
        # padding alone (the extractor raises on such a clip).
        for i in np.flatnonzero((errors == "") & (valid < self.frame_size)):
            errors[i] = (
                f"too short: {valid[i]} samples of audio in the snippet, under one 25 ms frame ({self.frame_size})"
            )
        batch["error"] = errors
        ok = np.flatnonzero(errors == "")
        self.compute_into(values, audio, valid, ok)
        batch["input_values"] = values
        batch["error"] = non_finite_rows(batch["error"], ok, audio, values)
        return batch
