"""Synthetic signals with a known f0 and level, for training and validating students.

Families: ``sine``; ``harmonic`` (the fundamental plus 1..max_partials-1
overtones with random amplitudes and phases, none above Nyquist);
``sawtooth`` and ``square`` (band-limited with PolyBLEP); ``noise_bursts``
(white noise in 1 to 4 bursts with 5 ms fades, silent in between; unpitched,
so its ``f0`` is stored as 0).

Level: ``db`` is the RMS level of the sounding part in dBFS, where a
full-scale sine is 0 dBFS (so a sine at ``db`` has peak ``10 ** (db / 20)``).
Nothing is clipped; keep ``db_range`` below about -12 dBFS if the audio is
meant to fit [-1, 1] (noise and sawtooth have higher crest factors).

Draws: a training sample's family, f0 (log-uniform) and level (uniform) come
from its own generator ``sample_rng(seed, key)``. A validation sample's come
from no generator at all: f0 and level sit on a low-discrepancy grid over
the ranges and families take turns, so the set is the same on every run and
for every seed; the few free details (partial amplitudes, noise) come from
a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .seeding import sample_rng

Family = Literal["sine", "harmonic", "sawtooth", "square", "noise_bursts"]
FAMILIES: tuple[str, ...] = ("sine", "harmonic", "sawtooth", "square", "noise_bursts")
UNPITCHED = frozenset({"noise_bursts"})
VALIDATION_SEED = 0x5EED_FA11  # fixed: validation details never follow the job seed
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0  # Weyl sequence step: a 2-D grid without rows or columns
FADE_SECONDS = 0.005


class SynthConfig(BaseModel):
    """The ``synth`` block of a teacher job config (input ``synth://``)."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(1000, ge=1, description="How many clips to generate.")
    validation: bool = Field(
        False,
        description="A deterministic validation set (split 'val'): the same on "
        "every run whatever the seed. Otherwise a training set "
        "(split 'train') drawn from the seed.",
    )
    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    f0_range: tuple[float, float] = Field((50.0, 2000.0), description="f0 in Hz, drawn log-uniformly.")
    db_range: tuple[float, float] = Field((-40.0, -12.0), description="RMS level in dBFS, drawn uniformly.")
    max_partials: int = Field(16, ge=2, description="Most partials of a 'harmonic' signal (fundamental included).")

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        lo, hi = self.f0_range
        if not 0 < lo <= hi:
            raise ValueError(f"f0_range must be 0 < low <= high, got {list(self.f0_range)}")
        if self.db_range[0] > self.db_range[1]:
            raise ValueError(f"db_range must be low <= high, got {list(self.db_range)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families repeat a name: {self.families}")
        return self

    @property
    def split(self) -> str:
        return "val" if self.validation else "train"


@dataclass(frozen=True)
class SynthParams:
    """What one sample is: everything the generator needs besides its detail generator."""

    family: str
    f0: float
    db: float
    phase: float  # start phase in cycles, [0, 1)


# ---- draws ------------------------------------------------------------------------------
def _log_uniform(u: float, low: float, high: float) -> float:
    value = float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
    return min(max(value, low), high)  # exp(log(...)) may land a hair outside the range


def draw_params(cfg: SynthConfig, seed: int, key: str, index: int) -> SynthParams:
    """Family, f0, level and phase of sample ``index`` (named ``key``)."""
    if cfg.validation:
        u = (index + 0.5) / cfg.num_samples  # f0: evenly over the log range
        v = (0.5 + index * GOLDEN) % 1.0  # level: a Weyl sequence, independent of f0
        family = cfg.families[index % len(cfg.families)]
        low_db, high_db = cfg.db_range
        return SynthParams(family, _log_uniform(u, *cfg.f0_range), float(low_db + v * (high_db - low_db)), 0.0)
    rng = sample_rng(seed, key, "synth")
    family = cfg.families[int(rng.integers(len(cfg.families)))]
    f0 = _log_uniform(float(rng.random()), *cfg.f0_range)
    db = float(rng.uniform(*cfg.db_range))
    return SynthParams(family, f0, db, float(rng.random()))


def detail_rng(cfg: SynthConfig, seed: int, key: str) -> np.random.Generator:
    """The generator for partials and noise: the job seed's for training, a fixed one for validation."""
    return sample_rng(VALIDATION_SEED if cfg.validation else seed, key, "detail")


# ---- signals (float64, unit scale; the level is applied by ``generate``) -------------------
def phase_ramp(f0: float, num_samples: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    """Phase in cycles, wrapped to [0, 1)."""
    return (phase + f0 * np.arange(num_samples, dtype=np.float64) / sample_rate) % 1.0


def sine(f0: float, num_samples: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * phase_ramp(f0, num_samples, sample_rate, phase))


def harmonic(
    f0: float, num_samples: int, sample_rate: int, rng: np.random.Generator, max_partials: int, phase: float = 0.0
) -> np.ndarray:
    """Fundamental (amplitude 1) plus random overtones, all below Nyquist."""
    below_nyquist = max(1, int((sample_rate / 2 - 1e-9) // f0))
    count = min(int(rng.integers(2, max_partials + 1)), below_nyquist)
    amplitudes = np.concatenate([[1.0], rng.uniform(0.05, 1.0, count - 1)])
    phases = np.concatenate([[phase], rng.random(count - 1)])
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    out = np.zeros(num_samples)
    for k, (a, p) in enumerate(zip(amplitudes, phases), start=1):
        out += a * np.sin(2 * np.pi * ((p + k * f0 * t) % 1.0))
    return out


def _polyblep(p: np.ndarray, dt: float) -> np.ndarray:
    """Correction that removes most aliasing from a unit step at phase 0 (PolyBLEP)."""
    out = np.zeros_like(p)
    rising = p < dt
    x = p[rising] / dt
    out[rising] = 2 * x - x * x - 1
    falling = p > 1 - dt
    x = (p[falling] - 1) / dt
    out[falling] = x * x + 2 * x + 1
    return out


def sawtooth(f0: float, num_samples: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    p = phase_ramp(f0, num_samples, sample_rate, phase)
    return 2 * p - 1 - _polyblep(p, f0 / sample_rate)


def square(f0: float, num_samples: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    p = phase_ramp(f0, num_samples, sample_rate, phase)
    dt = f0 / sample_rate
    return np.where(p < 0.5, 1.0, -1.0) + _polyblep(p, dt) - _polyblep((p + 0.5) % 1.0, dt)


def noise_bursts(num_samples: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """White noise gated by 1..4 bursts; returns (signal, gate in [0, 1])."""
    gate = np.zeros(num_samples)
    fade = max(1, int(FADE_SECONDS * sample_rate))
    for _ in range(int(rng.integers(1, 5))):
        length = max(2 * fade + 1, int(rng.uniform(0.05, 0.4) * sample_rate))
        length = min(length, num_samples)
        start = int(rng.integers(0, num_samples - length + 1))
        envelope = np.ones(length)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        envelope[:fade] = ramp
        envelope[length - fade :] = ramp[::-1]
        gate[start : start + length] = np.maximum(gate[start : start + length], envelope)
    return rng.standard_normal(num_samples) * gate, gate


def generate(
    params: SynthParams, num_samples: int, sample_rate: int, rng: np.random.Generator, max_partials: int = 16
) -> np.ndarray:
    """One clip (float64 ``[num_samples]``) at the level ``params.db``."""
    gate = None
    if params.family == "sine":
        signal = sine(params.f0, num_samples, sample_rate, params.phase)
    elif params.family == "harmonic":
        signal = harmonic(params.f0, num_samples, sample_rate, rng, max_partials, params.phase)
    elif params.family == "sawtooth":
        signal = sawtooth(params.f0, num_samples, sample_rate, params.phase)
    elif params.family == "square":
        signal = square(params.f0, num_samples, sample_rate, params.phase)
    elif params.family == "noise_bursts":
        signal, gate = noise_bursts(num_samples, sample_rate, rng)
    else:
        raise ValueError(f"unknown signal family {params.family!r}")
    sounding = signal if gate is None else signal[gate > 0.5]
    rms = float(np.sqrt(np.mean(sounding**2))) if sounding.size else 0.0
    target = 10.0 ** (params.db / 20.0) / np.sqrt(2.0)  # a full-scale sine (RMS 1/sqrt 2) is 0 dBFS
    return signal * (target / rms) if rms > 0 else signal


def synth_sample(
    cfg: SynthConfig, seed: int, key: str, index: int, sample_rate: int, num_samples: int
) -> tuple[np.ndarray, SynthParams]:
    """Sample ``index`` of the set: its audio and what was drawn for it."""
    params = draw_params(cfg, seed, key, index)
    audio = generate(params, num_samples, sample_rate, detail_rng(cfg, seed, key), cfg.max_partials)
    return audio, params


def stored_f0(params: SynthParams) -> float:
    """The ``f0`` column: the drawn f0, or 0 for unpitched families."""
    return 0.0 if params.family in UNPITCHED else params.f0


def sample_key(split: str, index: int, total: int) -> str:
    """``synth/train/000042``: zero padded so keys sort in index order."""
    return f"synth/{split}/{index:0{max(6, len(str(total - 1)))}d}"
