"""The features job's snippets read back for training: ``(input_values, label)`` per snippet.

An :class:`~.parquet.OutputRows` over one split (``train``, ``validate``,
``test``): ``input_values`` ``[max_length, n_mels]`` float32 and the label
index (names in ``labels.json``), every snippet once per epoch across workers
and ranks, shuffled across songs and shards from ``(seed, epoch)``.
"""

from __future__ import annotations

from .parquet import OutputRows


class FeatureSnippets(OutputRows):
    """``(input_values, label)`` tuples of a features output split (other ``fields`` or ``as_dict`` as you like)."""

    default_fields = ("input_values", "label")
    job = "features"
