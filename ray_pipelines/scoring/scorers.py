"""The built-in scorers: each a named set of score columns, all run by the one score stage.

- ``dnsmos``: dnsmos_sig, dnsmos_bak, dnsmos_ovrl, dnsmos_p808 (pretrained DNSMOS on 16 kHz audio;
  ONNX Runtime, on CUDA when its GPU build is installed);
- ``vad``: speech_fraction (Silero VAD's TorchScript model on 16 kHz audio; torch);
- ``signal``: peak_dbfs, rms_dbfs, clipping_fraction, dc_offset, silence_fraction, bandwidth_hz,
  snr_db (NumPy on the audio at the job's rate; CPU);
- ``reconstruction``: reconstruction_loss, signal_energy (the user's model on log-mels of audio or
  tensor inputs; torch).

A scorer is a class built in the actor with its options (plus ``device`` and
``forward_batch``), called on :class:`Clips` and returning one float64 array
per column. Classes are imported when built, so the driver never loads
librosa, ONNX Runtime or the models just to validate a config.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..audio.decode import resample
from ..config import ConfigError

ScorerName = Literal["dnsmos", "vad", "signal", "reconstruction"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"),
    "vad": ("speech_fraction",),
    "signal": (
        "peak_dbfs",
        "rms_dbfs",
        "clipping_fraction",
        "dc_offset",
        "silence_fraction",
        "bandwidth_hz",
        "snr_db",
    ),
    "reconstruction": ("reconstruction_loss", "signal_energy"),
}
CLASSES = {
    "dnsmos": "ray_pipelines.scoring.dnsmos:DnsmosScorer",
    "vad": "ray_pipelines.scoring.vad:SpeechScorer",
    "signal": "ray_pipelines.scoring.signal_stats:SignalScorer",
    "reconstruction": "ray_pipelines.scoring.reconstruction:ReconstructionScorer",
}
# Scorers that need the waveform (tensor sources only carry spectrograms) and that run a model
# worth a GPU.
AUDIO_ONLY = frozenset({"dnsmos", "vad", "signal"})
USES_GPU = frozenset({"dnsmos", "vad", "reconstruction"})
DEFAULT_AUDIO_SCORERS: tuple[str, ...] = ("dnsmos", "vad", "signal")
DEFAULT_TENSOR_SCORERS: tuple[str, ...] = ("reconstruction",)
# Model files inside the packages, hashed into the job's fingerprint (package, files).
MODEL_FILES = {
    "dnsmos": (
        "speechmos",
        ("dnsmos_models/sig_bak_ovr.onnx", "pdnsmos_models/sig_bak_ovr.onnx", "dnsmos_models/model_v8.onnx"),
    ),
    "vad": ("silero_vad", ("data/silero_vad.jit",)),
}
INSTALL_HINT = {"speechmos": "speechmos onnxruntime librosa", "silero_vad": "silero-vad"}


def score_columns(names: list[str] | tuple[str, ...]) -> list[str]:
    return [column for name in names for column in COLUMNS[name]]


def configured_scorers(scorers: list[str] | tuple[str, ...] | None, source: str) -> list[str]:
    """The scorers a config runs: those it names, else the source's defaults."""
    if scorers is not None:
        return list(scorers)
    return list(DEFAULT_AUDIO_SCORERS if source == "audio" else DEFAULT_TENSOR_SCORERS)


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (silero_vad's import sets torch's threads)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {package} package is not installed (pip install {INSTALL_HINT.get(package, package)})")
    return Path(next(iter(spec.submodule_search_locations)))


def model_digests(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """sha256 of the model files the built-in scorers load (for the config fingerprint)."""
    digests = {}
    for name in names:
        if name not in MODEL_FILES:
            continue
        package, files = MODEL_FILES[name]
        root = package_dir(package)
        for relative in files:
            path = root / relative
            if not path.exists():
                raise ConfigError(f"scorer {name}: {path} is missing from the installed {package} package")
            digests[f"{package}/{relative}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


class Scorer(Protocol):
    columns: tuple[str, ...]

    def __call__(self, clips: Clips) -> dict[str, np.ndarray]: ...


def build_scorer(name: str, options: dict[str, Any], device, forward_batch: int) -> Scorer:
    module, cls = CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options, device=device, forward_batch=forward_batch)


@dataclass
class Clips:
    """The rows one scorer call sees.

    ``audio``: the decoded windows ``[n, samples]`` at ``sample_rate`` (zero-padded past
    ``lengths``, the real samples of each row); ``mel``: spectrogram rows ``[n, 1, n_mels, T]``
    for tensor sources. ``waveform(i, rate)`` is row ``i``'s real samples at ``rate``, resampled
    with soxr (as the decoder does) once per rate and row.
    """

    keys: list[str]
    items: list[int]
    sample_rate: int | None = None
    audio: np.ndarray | None = None
    lengths: np.ndarray | None = None
    mel: np.ndarray | None = None
    _resampled: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def waveform(self, row: int, rate: int) -> np.ndarray:
        if self.audio is None:
            raise ValueError("this scorer needs audio; the input holds spectrograms (source: audio)")
        length = int(self.lengths[row]) if self.lengths is not None else self.audio.shape[1]
        native = self.audio[row, :length]
        if rate == self.sample_rate:
            return native
        if (row, rate) not in self._resampled:
            self._resampled[row, rate] = resample(native, self.sample_rate, rate)  # the decoder's soxr settings
        return self._resampled[row, rate]

    def waveforms(self, rate: int) -> list[np.ndarray]:
        return [self.waveform(i, rate) for i in range(len(self))]

    def subset(self, rows: list[int]) -> Clips:
        def pick(values):
            return None if values is None else values[rows]

        return Clips(
            [self.keys[i] for i in rows],
            [self.items[i] for i in rows],
            self.sample_rate,
            pick(self.audio),
            pick(self.lengths),
            pick(self.mel),
        )
