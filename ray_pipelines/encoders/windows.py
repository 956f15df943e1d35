"""Which windows of each input the encode job encodes, and the decoder that reads them.

Kept free of torch: the decode (and, for the sink, write) tasks that unpickle
these run in fresh worker processes, where importing torch would cost more
than the work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..audio.decode import DecodeError
from ..engine.decode import Window, WindowDecoder


class WindowPlan:
    """Which windows of ``sample_size`` samples an input yields.

    ``first``: one, from the start (pre_encode's behaviour). ``all``:
    ``ceil(length / sample_size)`` consecutive windows, so every sample falls in
    exactly one window; the last is padded. Every window carries the file's
    duration for the metadata.
    """

    def __init__(self, mode: str, sample_size: int, sample_rate: int):
        self.mode, self.sample_size, self.sample_rate = mode, sample_size, sample_rate

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        samples = int(round(file_seconds * self.sample_rate))
        if samples <= 0:
            raise DecodeError("empty: no audio samples")
        count = 1 if self.mode == "first" else math.ceil(samples / self.sample_size)
        return [
            Window(w, w * self.sample_size / self.sample_rate, {"file_seconds": float(file_seconds)})
            for w in range(count)
        ]


class EncodeDecoder(WindowDecoder):
    """The engine's decoder, with ``file_seconds`` on every row (error rows too, so batches stack)."""

    def input_rows(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for row in super().input_rows(item):
            row.setdefault("file_seconds", 0.0)
            yield row
