"""Split assignment as a pure function of (seed, key).

Adding inputs never moves an existing input to another split, because no
input's split depends on any other input.
"""

from __future__ import annotations

from .seeding import unit_interval


def assign_split(seed: int, key: str, fractions: dict[str, float]) -> str:
    """Pick a split name for ``key`` given ``{name: fraction}`` (summing to 1).

    Splits are laid out on [0, 1) in the order given; the key's hash point
    decides which one it falls in.
    """
    point = unit_interval(seed, "split", key)
    edge = 0.0
    last = None
    for name, fraction in fractions.items():
        edge += fraction
        last = name
        if point < edge:
            return name
    return last  # rounding: the point fell past the sum of fractions


def train_val_split(seed: int, key: str, val_fraction: float) -> str:
    """``"val"`` for about ``val_fraction`` of keys, ``"train"`` for the rest."""
    return assign_split(seed, key, {"val": val_fraction, "train": 1.0 - val_fraction})
