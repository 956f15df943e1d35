"""What the score job reads, as engine input rows and decoded sample rows.

Three kinds of input (``source`` in the config):

- ``audio``: audio files (any source the engine lists); decoded by the
  engine's :class:`~ray_pipelines.engine.decode.WindowDecoder`, one window
  per file; the stage computes the log-mel.
- ``pt``: a folder of ``.pt`` files, each one mel tensor ``[n_mels, T]`` or
  ``[1, n_mels, T]``, read with ``torch.load(weights_only=True)``.
- ``shards``: another job's committed Parquet output (e.g. the augment job's);
  one tensor column (``view1``) per row. An input is a source key; its rows
  (versions, windows) are its items.

Every decoded row carries the engine's bookkeeping columns (key, item,
samples_per_input, split, error, etag, source) plus ``class`` and ``group``
and the payload (``mel`` ``[1, n_mels, T]`` float32, or ``audio``). Problems
with one input (unreadable, not a tensor, wrong shape, non-finite) become
error rows with a reason; nothing raises.
"""

from __future__ import annotations

import io
import json
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from ..audio.decode import RangeReader if False else None  # noqa: F401  (placeholder removed below)
