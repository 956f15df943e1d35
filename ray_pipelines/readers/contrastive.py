"""Pre-generated contrastive views, read back for training."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..engine.arrow import table_to_numpy
from .parquet import list_shards, open_parquet, to_tensor


class ContrastiveViews(Dataset):
    """``(view1, view2)`` per clip, a different pre-generated version each epoch.

    Map-style: index ``i`` is a clip; ``set_epoch(e)`` picks, for every clip,
    version ``(e + offset(clip)) mod n_versions`` (offset drawn from the
    seed), so consecutive epochs see different views of the same clip. The
    index of (clip, version) -> (file, row) is built from the ``key`` and
    ``version`` columns only; a row's tensors are read on access with one
    row-group read cached per worker.
    """

    def __init__(
        self, output: str, split: str = "train", *, seed: int = 0, storage_options: dict[str, Any] | None = None
    ):
        self.files = list_shards(output, split, storage_options)
        self.storage_options = storage_options
        self.seed = seed
        self.epoch = 0
        clips: dict[str, dict[int, tuple[int, int, int]]] = {}
        for file_index, path in enumerate(self.files):
            pf = open_parquet(path, storage_options)
            for group in range(pf.num_row_groups):
                table = pf.read_row_group(group, columns=["key", "version"])
                for row, (key, version) in enumerate(
                    zip(table.column("key").to_pylist(), table.column("version").to_pylist())
                ):
                    clips.setdefault(key, {})[int(version)] = (file_index, group, row)
        self.keys = sorted(clips)
        self.locations = [clips[k] for k in self.keys]
        rng = np.random.default_rng(seed)
        self.offsets = rng.integers(0, 1 << 30, size=len(self.keys))
        self._cache: tuple[tuple[int, int], dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def version_for(self, index: int, epoch: int | None = None) -> int:
        versions = sorted(self.locations[index])
        epoch = self.epoch if epoch is None else epoch
        return versions[(epoch + int(self.offsets[index])) % len(versions)]

    def _row_group(self, file_index: int, group: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != (file_index, group):
            pf = open_parquet(self.files[file_index], self.storage_options)
            table = pf.read_row_group(group, columns=["view1", "view2"])
            self._cache = ((file_index, group), table_to_numpy(table))
        return self._cache[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        file_index, group, row = self.locations[index][self.version_for(index)]
        data = self._row_group(file_index, group)
        return to_tensor(data["view1"][row]).float(), to_tensor(data["view2"][row]).float()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]
