"""Which augmentations a view gets, with what parameters: the pools' configs and the draws.

A view draws ``num_waveform_augs`` distinct waveform augmentations and
``num_spectrogram_augs`` distinct spectrogram augmentations from the enabled
pools, plus their parameters, all from the view's own generator. Nothing here
imports torch: the augment job's config (validated on the driver) uses it, its
decode tasks draw every view's parameters (:class:`ViewDraws`, packed into a
column), and ``pool.AugmentationPool`` applies them to tensors in the actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..seeding import sample_rng


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GainAug(_Range):
    min_db: float = -6.0
    max_db: float = 6.0


class NoiseAug(_Range):
    min_snr_db: float = 10.0
    max_snr_db: float = 40.0


class TimeShiftAug(_Range):
    max_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Largest shift, as a fraction of the crop (duration); circular over the whole crop, padding "
        "included.",
    )


class PitchShiftAug(_Range):
    min_semitones: float = Field(-2.0, ge=-12)
    max_semitones: float = Field(2.0, le=12)


class TimeStretchAug(_Range):
    min_rate: float = Field(0.8, gt=0.25)
    max_rate: float = Field(1.25, lt=4.0)


class LowPassAug(_Range):
    min_cutoff_hz: float = Field(2000.0, gt=0)
    max_cutoff_hz: float = Field(8000.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class HighPassAug(_Range):
    min_cutoff_hz: float = Field(50.0, gt=0)
    max_cutoff_hz: float = Field(500.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class BandPassAug(_Range):
    min_center_hz: float = Field(500.0, gt=0)
    max_center_hz: float = Field(4000.0, gt=0)
    min_bandwidth_octaves: float = Field(1.0, gt=0)
    max_bandwidth_octaves: float = Field(3.0, gt=0)
    order: int = Field(4, ge=1, le=16)


class PolarityAug(_Range):
    """Invert the sign of the waveform (no parameters).

    It does not change a log-mel view: the power spectrogram of ``-x`` is that of ``x`` (and ``-x + noise``
    has the distribution of ``x + noise``). Kept in the default pool for parity with the seed notebook's
    pool (removing it would change every output's draws); ``polarity: null`` gives its draws to the others.
    """


class MaskAug(_Range):
    max_width: int = Field(..., ge=0, description="Widest mask, in bins (frequency) or frames (time).")


class WaveformPoolConfig(BaseModel):
    """Enabled waveform augmentations and their ranges; ``null`` removes one from the pool."""

    model_config = ConfigDict(extra="forbid")
    gain: GainAug | None = Field(default_factory=GainAug)
    noise: NoiseAug | None = Field(default_factory=NoiseAug)
    time_shift: TimeShiftAug | None = Field(default_factory=TimeShiftAug)
    pitch_shift: PitchShiftAug | None = Field(default_factory=PitchShiftAug)
    time_stretch: TimeStretchAug | None = Field(default_factory=TimeStretchAug)
    lowpass: LowPassAug | None = Field(default_factory=LowPassAug)
    highpass: HighPassAug | None = Field(default_factory=HighPassAug)
    bandpass: BandPassAug | None = Field(default_factory=BandPassAug)
    polarity: PolarityAug | None = Field(
        default_factory=PolarityAug,
        description="No effect on a log-mel view (the same power spectrogram); kept for parity with the seed "
        "notebook. null gives its draws to the others.",
    )


class SpectrogramPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frequency_mask: MaskAug | None = Field(default_factory=lambda: MaskAug(max_width=24))
    time_mask: MaskAug | None = Field(default_factory=lambda: MaskAug(max_width=26))


# Application order; a view applies the ones it drew, in this order. The signal
# steps run on the waveform, the spectral ones on the STFT power that feeds
# the mel projection (see augment.functional for why).
SIGNAL_STEPS = ("gain", "polarity", "time_shift", "noise")
SPECTRAL_STEPS = ("time_stretch", "pitch_shift", "lowpass", "highpass", "bandpass")
WAVEFORM_ORDER = SIGNAL_STEPS + SPECTRAL_STEPS
SPECTROGRAM_ORDER = ("frequency_mask", "time_mask")


@dataclass
class ViewParams:
    """Everything random about one view, drawn up front."""

    waveform: tuple[str, ...]
    spectrogram: tuple[str, ...]
    gain_db: float = 0.0
    sign: float = 1.0
    shift: int = 0
    stretch_rate: float = 1.0
    semitones: float = 0.0
    lowpass_hz: float = 0.0
    highpass_hz: float = 0.0
    band_hz: tuple[float, float] = (0.0, 0.0)
    snr_db: float = 0.0
    noise_seed: int = 0
    masks: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, width)


# The column that carries both views' draws of each row from the augment job's decode tasks to
# its stage (dropped there: it is no output column).
DRAWS_COLUMN = "view_draws"
# How many of each row's crop samples are the clip's audio (the rest zero padding), from the decode tasks.
VALID_COLUMN = "valid_samples"
# What a view's draws travel as, from the decode task that draws them to the actor that applies
# them: one float64 row per view. Every value is exact in float64: the floats are float64 already,
# the integers are far below 2**53, and the 63-bit noise seed travels as two 32-bit halves.
_VIEW_FLOATS = ("gain_db", "sign", "stretch_rate", "semitones", "lowpass_hz", "highpass_hz", "snr_db")
_FLOAT_FIELDS = (*_VIEW_FLOATS, "band_low_hz", "band_high_hz")
_INT_FIELDS = ("shift", "frequency_mask_start", "frequency_mask_width", "time_mask_start", "time_mask_width")
_PACKED_FIELDS = ("chosen", *_FLOAT_FIELDS, *_INT_FIELDS, "noise_seed_high", "noise_seed_low")
# Bit ``i`` of ``chosen``: the i-th augmentation of WAVEFORM_ORDER + SPECTROGRAM_ORDER.
_CHOICE_BITS = {name: 1 << i for i, name in enumerate(WAVEFORM_ORDER + SPECTROGRAM_ORDER)}


@dataclass
class ViewDraws:
    """The draws of a batch of views as arrays (one value per view), what the stage applies.

    Built by ``unpack`` from what :func:`pack_views` made of :class:`ViewParams`, bit for bit.
    """

    chosen: np.ndarray  # int64 bit set, see _CHOICE_BITS
    gain_db: np.ndarray
    sign: np.ndarray
    stretch_rate: np.ndarray
    semitones: np.ndarray
    lowpass_hz: np.ndarray
    highpass_hz: np.ndarray
    band_low_hz: np.ndarray
    band_high_hz: np.ndarray
    snr_db: np.ndarray
    shift: np.ndarray  # int64 from here on
    frequency_mask_start: np.ndarray
    frequency_mask_width: np.ndarray
    time_mask_start: np.ndarray
    time_mask_width: np.ndarray
    noise_seed: np.ndarray  # uint64

    PACKED_WIDTH = len(_PACKED_FIELDS)

    def __len__(self) -> int:
        return len(self.chosen)

    def chose(self, name: str) -> np.ndarray:
        """Which views chose augmentation ``name`` (bool per view)."""
        return (self.chosen & _CHOICE_BITS[name]) != 0

    def take(self, rows) -> ViewDraws:
        """The views at ``rows`` (indices or a slice)."""
        return ViewDraws(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def unpack(cls, packed: np.ndarray) -> ViewDraws:
        """From ``[views, PACKED_WIDTH]`` (any leading shape) float64."""
        packed = np.asarray(packed, dtype=np.float64).reshape(-1, cls.PACKED_WIDTH)
        column = {name: packed[:, i] for i, name in enumerate(_PACKED_FIELDS)}
        high, low = (column[n].astype(np.uint64) for n in ("noise_seed_high", "noise_seed_low"))
        values = {n: np.ascontiguousarray(column[n]) for n in _FLOAT_FIELDS}
        values.update({n: column[n].astype(np.int64) for n in ("chosen", *_INT_FIELDS)})
        return cls(**values, noise_seed=(high << np.uint64(32)) | low)


def pack_views(views: list[ViewParams]) -> np.ndarray:
    """``[len(views), PACKED_WIDTH]`` float64: what travels in the ``view_draws`` column."""
    rows = []
    for v in views:
        masks = [v.masks.get(name, (0, 0)) for name in SPECTROGRAM_ORDER]
        rows.append(
            [
                sum(_CHOICE_BITS[name] for name in (*v.waveform, *v.spectrogram)),
                *(getattr(v, name) for name in _VIEW_FLOATS),
                *v.band_hz,
                v.shift,
                *masks[0],
                *masks[1],
                v.noise_seed >> 32,
                v.noise_seed & 0xFFFFFFFF,
            ]
        )
    return np.array(rows, dtype=np.float64).reshape(len(views), ViewDraws.PACKED_WIDTH)


def _validate_ranges(pool: BaseModel) -> None:
    for name in type(pool).model_fields:
        aug = getattr(pool, name)
        if aug is None:
            continue
        values = aug.model_dump()
        for low_key in [k for k in values if k.startswith("min_")]:
            high_key = "max_" + low_key[4:]
            if values[low_key] > values.get(high_key, values[low_key]):
                raise ValueError(f"{name}.{low_key} ({values[low_key]}) is larger than {name}.{high_key}")


class AugmentationChoices:
    """Which augmentations each view gets and their parameters, drawn per view (NumPy only).

    Checks the pools and counts when built (the augment config builds one to validate itself, on the
    driver, which never imports torch); :class:`~.pool.AugmentationPool` adds applying the draws.
    """

    def __init__(
        self,
        waveform: WaveformPoolConfig,
        spectrogram: SpectrogramPoolConfig,
        num_waveform_augs: int,
        num_spectrogram_augs: int,
        sample_rate: int,
        num_samples: int,
        n_mels: int,
        frames: int,
    ):
        _validate_ranges(waveform)
        _validate_ranges(spectrogram)
        self.waveform = waveform
        self.spectrogram = spectrogram
        self.waveform_names = [n for n in WAVEFORM_ORDER if getattr(waveform, n) is not None]
        self.spectrogram_names = [n for n in SPECTROGRAM_ORDER if getattr(spectrogram, n) is not None]
        if num_waveform_augs > len(self.waveform_names):
            raise ValueError(
                f"num_waveform_augs ({num_waveform_augs}) exceeds the {len(self.waveform_names)} "
                "enabled waveform augmentations"
            )
        if num_spectrogram_augs > len(self.spectrogram_names):
            raise ValueError(
                f"num_spectrogram_augs ({num_spectrogram_augs}) exceeds the "
                f"{len(self.spectrogram_names)} enabled spectrogram augmentations"
            )
        self.num_waveform_augs = num_waveform_augs
        self.num_spectrogram_augs = num_spectrogram_augs
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.n_mels = n_mels
        self.frames = frames

    def mask_axes(self) -> tuple[tuple[str, int], ...]:
        """Each mask and the size of the axis it masks."""
        return (("frequency_mask", self.n_mels), ("time_mask", self.frames))

    def masks_capped(self) -> bool:
        """Whether a mask's ``max_width`` reaches across its axis (capped one short of it since 2026-12-07)."""
        return any(
            (mask := getattr(self.spectrogram, name)) and mask.max_width >= size for name, size in self.mask_axes()
        )

    # ---- drawing -----------------------------------------------------------------
    def draw(self, rng: np.random.Generator) -> ViewParams:
        """All of one view's random choices. Every parameter is drawn whether or not
        its augmentation was chosen, so the stream never depends on the choice."""
        wave_pick = rng.choice(len(self.waveform_names), size=self.num_waveform_augs, replace=False)
        spec_pick = rng.choice(len(self.spectrogram_names), size=self.num_spectrogram_augs, replace=False)
        w = self.waveform
        p = ViewParams(
            waveform=tuple(self.waveform_names[i] for i in sorted(wave_pick)),
            spectrogram=tuple(self.spectrogram_names[i] for i in sorted(spec_pick)),
        )
        u = rng.random(10)
        if w.gain:
            p.gain_db = w.gain.min_db + u[0] * (w.gain.max_db - w.gain.min_db)
        p.sign = -1.0
        if w.time_shift:
            max_shift = int(w.time_shift.max_fraction * self.num_samples)
            p.shift = int(round((2 * u[1] - 1) * max_shift))
        if w.time_stretch:
            lo, hi = np.log(w.time_stretch.min_rate), np.log(w.time_stretch.max_rate)
            p.stretch_rate = float(np.exp(lo + u[2] * (hi - lo)))
        if w.pitch_shift:
            p.semitones = w.pitch_shift.min_semitones + u[3] * (
                w.pitch_shift.max_semitones - w.pitch_shift.min_semitones
            )
        if w.lowpass:
            p.lowpass_hz = _log_uniform(u[4], w.lowpass.min_cutoff_hz, w.lowpass.max_cutoff_hz)
        if w.highpass:
            p.highpass_hz = _log_uniform(u[5], w.highpass.min_cutoff_hz, w.highpass.max_cutoff_hz)
        if w.bandpass:
            center = _log_uniform(u[6], w.bandpass.min_center_hz, w.bandpass.max_center_hz)
            octaves = w.bandpass.min_bandwidth_octaves + u[7] * (
                w.bandpass.max_bandwidth_octaves - w.bandpass.min_bandwidth_octaves
            )
            p.band_hz = (center / 2 ** (octaves / 2), center * 2 ** (octaves / 2))
        if w.noise:
            p.snr_db = w.noise.min_snr_db + u[8] * (w.noise.max_snr_db - w.noise.min_snr_db)
        p.noise_seed = int(rng.integers(0, 2**63 - 1))
        for name, size in self.mask_axes():
            mask = getattr(self.spectrogram, name)
            # Narrower than the axis: a mask of all of it made the view a constant (its mean).
            max_width = min(mask.max_width, size - 1) if mask else 0
            width = int(rng.integers(0, max_width + 1))
            start = int(rng.integers(0, size - width + 1))
            if name in p.spectrogram:
                p.masks[name] = (start, width)
        return p

    def draw_views(self, seed: int, key: str, version: int) -> np.ndarray:
        """Both views of one (clip, version), packed (``[2, PACKED_WIDTH]``): views 1 and 2
        drawn from ``sample_rng(seed, key, version, view)``."""
        return pack_views([self.draw(sample_rng(seed, key, int(version), view)) for view in (1, 2)])


def _log_uniform(u: float, low: float, high: float) -> float:
    return float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
