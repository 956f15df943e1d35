"""PyTorch datasets over written outputs (plain pyarrow underneath; no Ray needed).

Every reader is an ``IterableDataset`` whose epoch yields each item exactly once
across DataLoader workers and ``torch.distributed`` ranks, shuffled from
``(seed, epoch)``, with ``set_epoch`` reaching persistent workers.
"""

from .contrastive import ContrastiveViews
from .encode import EncodedLatents, EncodedShardRows, open_encoded
from .errors import UnreadableFile
from .features import FeatureSnippets
from .parquet import OutputRows, ShardRows, list_shards
from .teacher import TeacherCache

__all__ = [
    "ContrastiveViews",
    "EncodedLatents",
    "EncodedShardRows",
    "FeatureSnippets",
    "OutputRows",
    "ShardRows",
    "TeacherCache",
    "UnreadableFile",
    "list_shards",
    "open_encoded",
]
