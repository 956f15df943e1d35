"""The ``vad`` scorer: the share of a clip that is speech, by Silero VAD.

The model is the TorchScript file inside the ``silero-vad`` wheel (MIT licence, Silero Team),
loaded from the installed package (``silero_vad.load_silero_vad``: no download). Silero VAD gives
a speech probability for every 512-sample window at 16 kHz; the library's own
``get_speech_timestamps_from_probs`` turns them into speech segments (threshold, minimum speech
and silence durations, padding: its defaults unless configured), and ``speech_fraction`` is the
segments' total length over the clip's.

The windows of ``forward_batch`` clips go through the model together (the per-file way calls it
once per window of one clip; batching makes it about 5x cheaper on a CPU core), always as exactly
``forward_batch`` rows, zero rows padding the last chunk, so a clip's probabilities do not depend
on which clips shared its batch. The model is causal, so the zeros after a shorter clip's end do
not change its windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .options import VadOptions  # noqa: F401  (re-exported: torch-free, in options)
from .scorers import COLUMNS as SCORER_COLUMNS

SAMPLE_RATE = 16000
WINDOW = 512  # samples per speech probability at 16 kHz


class SpeechScorer:
    columns = SCORER_COLUMNS["vad"]

    def __init__(self, *, device: torch.device | str = "cpu", forward_batch: int = 16, **options: Any):
        from silero_vad import get_speech_timestamps_from_probs, load_silero_vad

        self.options = VadOptions(**options)
        self.device = torch.device(device)
        self.model = load_silero_vad().to(self.device)
        self.segmenter = get_speech_timestamps_from_probs
        self.batch = forward_batch

    def probabilities(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Per clip, the speech probability of each 512-sample window (the last zero-padded)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(waves), self.batch):
                chunk = waves[start : start + self.batch]
                windows = [-(-len(w) // WINDOW) for w in chunk]
                x = np.zeros((self.batch, max(windows) * WINDOW), dtype=np.float32)
                for i, wave in enumerate(chunk):
                    x[i, : len(wave)] = wave
                x = torch.from_numpy(x).to(self.device)
                self.model.reset_states()
                probs = torch.cat(
                    [self.model(x[:, w * WINDOW : (w + 1) * WINDOW], SAMPLE_RATE) for w in range(max(windows))], dim=1
                ).cpu()
                out.extend(probs[i, :n].numpy() for i, n in enumerate(windows))
        return out

    def speech_fraction(self, probs: np.ndarray, samples: int) -> float:
        o = self.options
        segments = self.segmenter(
            probs.tolist(),
            sampling_rate=SAMPLE_RATE,
            threshold=o.threshold,
            min_speech_duration_ms=o.min_speech_ms,
            min_silence_duration_ms=o.min_silence_ms,
            speech_pad_ms=o.speech_pad_ms,
            audio_length_samples=samples,
        )
        return sum(s["end"] - s["start"] for s in segments) / samples

    def __call__(self, clips) -> dict[str, np.ndarray]:
        waves = clips.waveforms(SAMPLE_RATE)
        if any(len(w) == 0 for w in waves):
            raise ValueError("empty clip")
        probs = self.probabilities(waves)
        return {"speech_fraction": np.array([self.speech_fraction(p, len(w)) for p, w in zip(probs, waves)])}
