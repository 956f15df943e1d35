"""Stages: plain callable classes over batch dicts, run in Ray Data actor pools.

A stage's ``__init__`` loads what it needs once per actor (models, filter
banks) and picks its device (``cuda`` when the actor was given a GPU);
``__call__(batch) -> batch`` maps a dict of NumPy columns to another. Each
runs without Ray, so it can be tested and benchmarked on its own.
"""

from .device import pick_device

__all__ = ["pick_device"]
