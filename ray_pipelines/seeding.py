"""Deterministic per-sample randomness.

Every random draw in a job comes from a generator seeded by a hash of
(job seed, sample key, and further identifiers such as version and view).
The draws of one sample therefore never depend on which worker, batch or
retry processed it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from the job seed and any identifying parts.

    Uses BLAKE2b over a canonical text encoding, so it is stable across
    processes, machines and Python versions (unlike ``hash()``).
    """
    text = "\x1f".join([str(int(seed)), *(str(p) for p in parts)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_rng(seed: int, *parts: object) -> np.random.Generator:
    """A NumPy generator for one sample (PCG64, platform independent)."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *parts)))


def unit_interval(seed: int, *parts: object) -> float:
    """A number in [0, 1) that is a pure function of its arguments."""
    return derive_seed(seed, *parts) / 2.0**64
