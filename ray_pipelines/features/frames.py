"""The AST feature extractor's constants and Kaldi's frame arithmetic, without torch.

The features job's config and plan (on the driver, which never imports torch) use these;
``kaldi`` (the features themselves, in the actors) re-exports them.
"""

from __future__ import annotations

AST_MEAN = -4.2677393  # AudioSet log-mel statistics used by ASTFeatureExtractor
AST_STD = 4.5689974
AST_SAMPLE_RATE = 16000
PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def frame_sizes(sample_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> tuple[int, int, int]:
    """(window size, shift, padded FFT size) in samples, as Kaldi rounds them."""
    size = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    return size, shift, 1 << (size - 1).bit_length()


def num_frames(num_samples: int, size: int, shift: int) -> int:
    """Frames Kaldi makes from ``num_samples`` with ``snip_edges`` (only whole frames)."""
    return 0 if num_samples < size else 1 + (num_samples - size) // shift
