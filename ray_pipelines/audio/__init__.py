"""Audio decoding: windows of audio files with soundfile, PyAV as fallback."""

from .decode import AudioFile, DecodeError, InputAudio, conform_channels, crop_or_pad, load_window, resample

__all__ = ["AudioFile", "DecodeError", "InputAudio", "conform_channels", "crop_or_pad", "load_window", "resample"]
