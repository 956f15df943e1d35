"""Rows of a batch for a model call, without a copy where they allow it (shared by the stages)."""

from __future__ import annotations

import numpy as np


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` (``rows`` ascending, as ``np.flatnonzero`` gives them), as a view where the
    rows are consecutive: the usual case, a batch without error rows. A gathered copy wrote every
    byte once more before the GPU got it: 85 MB for 8 stereo 30 s windows. On an H200 the encode
    job ran at 47 % of the bare model with it, 76 % without (93 % once its writes kept up too)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return array[rows[0] : rows[-1] + 1]
    return array[rows]
