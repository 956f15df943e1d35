"""Rows of a batch for a model call, without a copy where they allow it; a model call that one bad row
must not cost its batch; rows whose outputs are not finite (shared by the stages)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from .. import error_text
from ..audio.decode import DEVICE_FAULT
from ..error_text import exception_chain

log = logging.getLogger(__name__)

Result = TypeVar("Result")


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` (``rows`` ascending, as ``np.flatnonzero`` gives them), as a view where the
    rows are consecutive: the usual case, a batch without error rows. A gathered copy wrote every
    byte once more before the GPU got it: 85 MB for 8 stereo 30 s windows. On an H200 the encode
    job ran at 47 % of the bare model with it, 76 % without (93 % once its writes kept up too)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return array[rows[0] : rows[-1] + 1]
    return array[rows]


def float_rows(audio: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``audio[rows]`` as a float32 CPU tensor for a model: no copy where the rows are consecutive and
    float32 already (:func:`take_rows`)."""
    return torch.from_numpy(np.ascontiguousarray(take_rows(audio, rows), dtype=np.float32))


# A GPU's memory taken (by another job on it, by the batch before) and its hardware faults, as torch
# raises them; a RuntimeError from TorchScript keeps only the text. Not a device-side assert or a
# cuBLAS/cuDNN "not supported": those follow the input, and would be retried by every run.
DEVICE_FAULTS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "uncorrectable ECC error",
)


def is_device_fault(error: BaseException | None) -> bool:
    """Out of GPU memory or a GPU's hardware fault (here or in what it was raised from or during): the
    device's state, not the clip's."""
    return any(
        isinstance(seen, torch.OutOfMemoryError) or any(mark in str(seen) for mark in DEVICE_FAULTS)
        for seen in exception_chain(error)
    )


def model_failure(what: str, error: Exception, describe: Callable[[Exception], str] = str) -> str:
    """A row's error for a model that raised on it: ``"<what> failed: <error>"``; a device's fault is marked
    retryable (``device:``, retried by the next run: a GPU another job filled failed rows for good, exit 0)."""
    reason = f"{what} failed: {describe(error)}"
    return f"{DEVICE_FAULT} {reason}" if is_device_fault(error) else reason


def failure_reason(what: str, device: torch.device, describe: Callable[[Exception], str] = str) -> Callable:
    """The ``reason`` for :func:`run_else_row_by_row` (:func:`model_failure`), a CUDA device's cached
    memory released first (what the failed call left there would crowd the rows run again alone)."""

    def reason(error: Exception) -> str:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return model_failure(what, error, describe)

    return reason


class BatchOnlyFailure:
    """Warns, once per stage instance, that a model raised on a chunk of rows and then ran on each row alone:
    a model that fails only when batched (one that takes a single clip as [C, T] and reads [B, T] as B
    channels) otherwise costs, unseen, a failed call plus one call per row on every chunk. ``hint``: what
    the stage's user should check; ``describe``: the chunk's error as text."""

    def __init__(self, what: str, hint: str = "", describe: Callable[[Exception], str] = error_text.describe):
        self.what, self.hint, self.describe, self.warned = what, hint, describe, False

    def __call__(self, error: str, rows: int) -> None:
        if self.warned:
            return
        self.warned = True
        log.warning(
            "%s raised on a chunk of %d rows, then ran on each of them alone: every such chunk costs a failed "
            "call plus one call per row (said once). The chunk's error: %s%s",
            self.what,
            rows,
            error,
            f". {self.hint}" if self.hint else "",
        )


def run_else_row_by_row(
    run: Callable[[np.ndarray], Result],
    rows: np.ndarray,
    reason: Callable[[Exception], str],
    failure: type[Exception] = Exception,
    batch_only: BatchOnlyFailure | None = None,
) -> list[tuple[np.ndarray, Result | str]]:
    """``run(rows)`` for a model call on a batch's ``rows``; where it raises ``failure`` on several rows,
    each row is run again alone, so one bad clip never costs its batch. Returns ``(rows, result)`` per
    call that ran and ``(row, reason(error))`` per row it still raises on (``reason`` names the failure
    for the row's error, and frees what the failed call held where a device needs it). ``batch_only`` is
    told when every row then ran alone (not after a device's fault: the rows alone fitting is expected)."""
    try:
        return [(rows, run(rows))]
    except failure as error:
        if len(rows) == 1:
            return [(rows, reason(error))]
        # The text only: the exception's frames would hold what the failed call allocated on the device.
        chunk_error = batch_only.describe(error) if batch_only and not is_device_fault(error) else None
    parts: list[tuple[np.ndarray, Result | str]] = []
    every_row_ran = True
    for i in range(len(rows)):
        try:
            parts.append((rows[i : i + 1], run(rows[i : i + 1])))
        except failure as error:
            parts.append((rows[i : i + 1], reason(error)))
            every_row_ran = False
    if batch_only and chunk_error is not None and every_row_ran:
        batch_only(chunk_error, len(rows))
    return parts


def non_finite_rows(errors: np.ndarray, ok: np.ndarray, audio: np.ndarray, *views: np.ndarray) -> np.ndarray:
    """``errors`` with the rows among ``ok`` whose views hold inf or NaN made error rows: samples that are
    finite but huge (a float WAV reaching 1e20) overflow the float32 power to inf, which was stored."""
    finite = np.ones(len(errors), dtype=bool)
    for view in views:
        finite &= np.isfinite(view.reshape(len(view), -1)).all(axis=1)
    bad = ok[~finite[ok]]
    if not len(bad):
        return errors
    errors = errors.astype(object).copy()
    for row in bad:
        peak = float(np.abs(audio[row]).max())
        errors[row] = f"non-finite spectrogram: the audio's peak is {peak:.3g} (full scale is 1)"
    return errors
