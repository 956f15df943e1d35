"""The decode step: input rows -> one row per window of audio (CPU tasks).

A job says which windows of each input it needs (``plan``: key and file
duration -> windows); the decoder opens the input once, reads just those
windows (seeking, so long files are never decoded whole), resamples, crops
or pads, validates them, and emits a row per window. Anything that goes
wrong becomes an error row with a reason; nothing raises out of here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.decode import AudioFile, DecodeError, InputAudio, check_finite, check_not_silent, load_window

# Columns every decoded row carries besides the job's payload.
ROW_COLUMNS = ("key", "split", "samples_per_input", "error", "etag", "source")
# A file whose windows together span more than it is decoded once whole (up to this many bytes
# of float32 samples, about 3 minutes of 44.1 kHz stereo): the augment job's five 3 s crops of a
# 4 s clip read it four times over, and the decode tasks are what bounds that job on a GPU.
WHOLE_FILE_BYTES = 64 * 2**20
# A block's windows go through the decoder and its stage in pieces of about this many bytes of decoded
# audio (one piece for a block that holds less, as nearly every block does): every window of a 6-hour
# 16 kHz file held at once took its worker 3.44 GB at its peak, 1.13 GB in pieces (``Job.piece_bytes``).
PIECE_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Window:
    index: int  # sample index within the input (version, window, snippet number)
    start: float  # seconds from the start of the file
    extra: dict[str, Any] | None = None  # per-window job columns


class WindowDecoder:
    """Callable over input batches (``map_batches``, ``batch_format="numpy"``).

    ``plan(key, duration_seconds)`` lists the windows an input yields;
    ``split_of(key)`` names its split unless the input row already has one.
    """

    def __init__(
        self,
        *,
        plan: Callable[[str, float], list[Window]],
        sample_rate: int,
        duration: float,
        index_column: str,
        split_of: Callable[[str], str] | None = None,
        channels: int | None = None,
        min_duration: float = 0.0,
        silence_db: float | None = None,
        storage_options: dict[str, Any] | None = None,
        passthrough: tuple[str, ...] = (),
        valid_column: str | None = None,
    ):
        self.plan = plan
        self.sample_rate = sample_rate
        self.duration = duration
        self.index_column = index_column
        self.split_of = split_of or (lambda key: "")
        self.channels = channels
        self.min_duration = min_duration
        self.silence_db = silence_db
        self.storage_options = storage_options or {}
        self.passthrough = passthrough
        self.valid_column = valid_column
        self.num_samples = int(round(duration * sample_rate))

    def _empty_audio(self) -> np.ndarray:
        shape = (self.num_samples,) if self.channels is None else (self.channels, self.num_samples)
        return np.zeros(shape, dtype=np.float32)

    def _row(
        self,
        item: dict[str, Any],
        index: int,
        expected: int,
        error: str,
        audio: np.ndarray | None,
        start: float = 0.0,
        valid: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        row = {
            "key": item["key"],
            self.index_column: index,
            "samples_per_input": expected,
            "split": item.get("split") or self.split_of(item["key"]),
            "error": error,
            "etag": item.get("etag", ""),
            "source": item.get("source") or item["uri"],
            "start_seconds": float(start),
            "audio": audio if audio is not None else self._empty_audio(),
        }
        if self.valid_column:
            row[self.valid_column] = int(valid)
        for name in self.passthrough:
            row[name] = item.get(name)
        row.update(extra or {})
        return row

    def decode_input(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """All rows (windows or one error row) for one input."""
        return list(self.input_rows(item))

    def input_rows(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """:meth:`decode_input`'s rows, each window decoded as it is asked for: an input's windows need
        not all be in memory at once (every window of an hour-long file). Errors before the first window
        make the one error row of the input; a window's own failure, its error row."""
        if item.get("error"):
            yield self._row(item, -1, 0, str(item["error"]), None)
            return
        skip = set(np.asarray(item["skip"]).tolist()) if item.get("skip") is not None else set()
        try:
            audio_file = AudioFile(InputAudio.from_row(item), self.storage_options)
        except Exception as e:
            yield self._row(item, -1, 0, error_reason(e), None)
            return
        with audio_file:
            try:
                windows = self._plan(item, audio_file, skip)
            except Exception as e:
                yield self._row(item, -1, 0, error_reason(e), None)
                return
            for window in windows:
                if window.index in skip:
                    continue
                yield self._window_row(item, audio_file, window, len(windows))

    def _plan(self, item: dict[str, Any], audio_file: AudioFile, skip: set[int]) -> list[Window]:
        """The input's windows, once its length is known; the whole file decoded where that saves reads."""
        fits_whole = audio_file.frames * audio_file.channels * 4 <= WHOLE_FILE_BYTES
        if audio_file.duration < self.min_duration:
            raise DecodeError(f"too short: {audio_file.duration:.3f} s is below min_duration {self.min_duration:g} s")
        windows = self.plan(item["key"], audio_file.duration)
        todo = sum(window.index not in skip for window in windows)
        if todo > 1 and todo * self.duration > audio_file.duration and fits_whole:
            audio_file.decode_whole()
        return windows

    def _window_row(self, item: dict[str, Any], audio_file: AudioFile, window: Window, count: int) -> dict[str, Any]:
        try:
            audio, valid = load_window(audio_file, window.start, self.duration, self.sample_rate, self.channels)
            check_finite(audio, self.sample_rate, window.start)
            check_not_silent(audio, self.silence_db)
            return self._row(item, window.index, count, "", audio, window.start, valid, window.extra)
        except Exception as e:  # this window's error row, the windows before it kept
            return self._row(item, window.index, count, error_reason(e), None, window.start, extra=window.extra)

    def pieces(self, batch: dict[str, np.ndarray], piece_bytes: int = PIECE_BYTES) -> Iterator[dict[str, np.ndarray]]:
        """The batch's rows as NumPy batches of about ``piece_bytes`` of audio each (one batch where the
        whole block holds less): what a block of long files' windows holds never sits in memory at once."""
        names = list(batch)
        rows: list[dict[str, Any]] = []
        held = 0
        for i in range(len(batch["key"])):
            for row in self.input_rows({name: python_scalar(batch[name][i]) for name in names}):
                rows.append(row)
                held += row["audio"].nbytes
                if held >= piece_bytes:
                    yield rows_to_batch(rows)
                    rows, held = [], 0
        if rows:
            yield rows_to_batch(rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The decode task of a GPU plan (``map_batches``): the block's rows, in :meth:`pieces`."""
        yield from self.pieces(batch)


def error_reason(error: Exception) -> str:
    """An error row's reason: a :class:`DecodeError`'s own, else a decoder bug's (which must not take the
    other inputs down with it) as ``undecodable``."""
    return str(error) if isinstance(error, DecodeError) else f"undecodable: {type(error).__name__}: {error}"


def python_scalar(value: Any) -> Any:
    """A NumPy scalar as the Python value (int, float, str, bool); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stack row dicts into a NumPy batch (tensors stacked, strings as object arrays).

    Rows may differ in columns (an error row lacks a window's extra columns):
    a missing value becomes a blank of the column's kind (zeros, "", 0).
    """
    if not rows:
        return {}
    names = list(dict.fromkeys(name for row in rows for name in row))
    batch: dict[str, np.ndarray] = {}
    for name in names:
        present = next(r[name] for r in rows if name in r)
        blank = _blank_like(present)
        values = [r.get(name, blank) for r in rows]
        if isinstance(present, np.ndarray):
            batch[name] = np.stack(values)
        elif isinstance(present, str) or present is None:
            batch[name] = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            batch[name] = np.asarray(values)
    return batch


def concat_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate NumPy batches; a column some batches lack (an all-error batch has no window
    extras) is filled with blanks of the column's kind, as in :func:`rows_to_batch`."""
    batches = [b for b in batches if b]
    if len(batches) <= 1:
        return batches[0] if batches else {}
    names = list(dict.fromkeys(name for b in batches for name in b))
    out = {}
    for name in names:
        template = next(b[name] for b in batches if name in b)
        parts = []
        for b in batches:
            if name in b:
                parts.append(b[name])
            else:
                rows = len(next(iter(b.values())))
                blank = "" if template.dtype == object else 0
                parts.append(np.full((rows, *template.shape[1:]), blank, dtype=template.dtype))
        out[name] = np.concatenate(parts)
    return out


def _blank_like(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.zeros_like(value)
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.number)):
        return type(value)(0)
    return ""
