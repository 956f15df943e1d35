"""PyTorch datasets over written outputs (plain pyarrow underneath; no Ray needed)."""

from .contrastive import ContrastiveViews
from .parquet import ShardRows, list_shards

__all__ = ["ContrastiveViews", "ShardRows", "list_shards"]
