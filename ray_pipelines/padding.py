"""Padding masks: which samples of a padded window are real audio, at audio and latent resolution.

A window of ``T`` samples holds ``valid`` real samples followed by zero
padding. At audio resolution the mask is 1 for the first ``valid`` samples.
Downsampled by a model's ratio ``r`` to ``N`` latent frames, frame ``j``
covers samples ``[j*r, (j+1)*r)`` and is 1 when any real sample falls in it
(a max-pool, not nearest-neighbour: a frame holding the clip's last few
samples counts as real).
"""

from __future__ import annotations

import numpy as np


def audio_padding_mask(valid: np.ndarray, num_samples: int) -> np.ndarray:
    """``[B]`` real-sample counts -> ``[B, T]`` uint8 mask (1 real, 0 padding)."""
    valid = np.asarray(valid, dtype=np.int64).reshape(-1)
    return (np.arange(num_samples)[None, :] < valid[:, None]).astype(np.uint8)


def downsample_mask(mask: np.ndarray, ratio: int, num_frames: int) -> np.ndarray:
    """``[B, T]`` audio mask -> ``[B, N]``: frame j = max(mask[j*ratio:(j+1)*ratio]).

    Frames past the end of the audio (when ``N * ratio > T``) are 0; audio past
    ``N * ratio`` is ignored.
    """
    mask = np.asarray(mask)
    batch, length = mask.shape
    covered = num_frames * ratio
    if covered > length:
        mask = np.pad(mask, ((0, 0), (0, covered - length)))
    return mask[:, :covered].reshape(batch, num_frames, ratio).max(axis=2).astype(np.uint8)


def latent_padding_mask(valid: np.ndarray, ratio: int, num_frames: int) -> np.ndarray:
    """``[B]`` real-sample counts -> ``[B, N]`` latent mask, without the ``[B, T]`` intermediate.

    Equal to ``downsample_mask(audio_padding_mask(valid, T), ratio, N)``:
    frame j holds real audio iff its first sample ``j * ratio`` is real.
    """
    valid = np.asarray(valid, dtype=np.int64).reshape(-1)
    starts = np.arange(num_frames, dtype=np.int64) * ratio
    return (starts[None, :] < valid[:, None]).astype(np.uint8)
