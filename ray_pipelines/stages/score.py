"""The score stage: every configured scorer on each batch, in one actor (GPU when present)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..error_text import describe
from ..scoring.scorers import Clips, Scorer, build_scorer
from .device import pick_device
from .rows import failure_reason, run_else_row_by_row

# Columns handed on to the sink; the audio or spectrogram itself is dropped here, it is not written.
PASS_COLUMNS = ("key", "item", "samples_per_input", "split", "error", "etag", "source", "class", "group")
# Rows per model forward unless configured. On CPU small chunks keep the activations in cache
# (the reference MAE runs about 1.5x faster per item at 16 than at 1 or 64 on one core; Silero
# VAD about 5x faster at 16 than one clip at a time).
CPU_FORWARD_BATCH = 16
CUDA_FORWARD_BATCH = 64


class ScoreStage:
    """``{"audio" [B, samples] (+ "valid") | "mel" [B, 1, n_mels, T], "error", ...}`` -> one column per score.

    ``scorers``: ``{name: options}`` (``ray_pipelines.scoring.scorers``), run in that order;
    ``sample_rate``: the rate of ``audio``; ``valid``, when present, is each row's number of real
    samples (scorers of the waveform score those only). A scorer that raises on a batch is run
    again row by row: the rows it still fails on become error rows (``score failed: <scorer>:
    ...``) and the others keep their scores, so one bad clip never costs its batch.
    """

    def __init__(
        self,
        *,
        scorers: dict[str, dict[str, Any]],
        sample_rate: int | None = None,
        forward_batch: int | None = None,
        device: str | None = None,
    ):
        self.device = pick_device(device)
        self.forward_batch = forward_batch or (CUDA_FORWARD_BATCH if self.device.type == "cuda" else CPU_FORWARD_BATCH)
        self.sample_rate = sample_rate
        self.scorers: dict[str, Scorer] = {
            name: build_scorer(name, options, self.device, self.forward_batch) for name, options in scorers.items()
        }
        self.columns = [column for scorer in self.scorers.values() for column in scorer.columns]

    def clips(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> Clips:
        def take(name: str) -> np.ndarray | None:
            if name not in batch:
                return None
            return batch[name] if len(ok) == len(batch["key"]) else batch[name][ok]  # no copy in the common case

        return Clips(
            keys=[str(k) for k in batch["key"][ok]],
            items=batch["item"][ok].astype(int).tolist(),
            sample_rate=self.sample_rate,
            audio=take("audio"),
            lengths=take("valid"),
            mel=take("mel"),
        )

    def run_guarded(self, name: str, scorer: Scorer, clips: Clips) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """The scorer's columns for ``clips`` (NaN where it failed) and ``{row: reason}`` for the rows it
        failed on."""
        values = {column: np.full(len(clips), np.nan) for column in scorer.columns}
        failed: dict[int, str] = {}
        parts = run_else_row_by_row(
            lambda rows: scorer(clips if len(rows) == len(clips) else clips.subset(rows.tolist())),
            np.arange(len(clips)),
            failure_reason("score", self.device, lambda e: f"{name}: {describe(e)}"),
        )
        for rows, result in parts:
            if isinstance(result, str):
                failed[int(rows[0])] = result
                continue
            for column in scorer.columns:
                values[column][rows] = result[column]
        return values, failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        errors = np.array(batch["error"], dtype=object)
        scores = {column: np.full(n, np.nan) for column in self.columns}
        ok = np.flatnonzero(errors == "")
        if len(ok):
            clips = self.clips(batch, ok)
            for name, scorer in self.scorers.items():
                values, failed = self.run_guarded(name, scorer, clips)
                for column in scorer.columns:
                    scores[column][ok] = values[column]
                    for row in np.flatnonzero(~np.isfinite(values[column])):  # DNSMOS of samples reaching 1e20
                        failed.setdefault(int(row), f"score failed: {name}: non-finite {column}")
                for row, reason in failed.items():
                    errors[ok[row]] = errors[ok[row]] or reason
        out = {name: batch[name] for name in PASS_COLUMNS if name in batch}
        out["error"] = errors
        out.update(scores)
        return out
