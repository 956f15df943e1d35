"""Batched waveform and spectrogram augmentations.

``functional`` holds pure tensor functions whose random parameters are
explicit per-sample tensors (like ``torchaudio.functional``); ``pool``
draws those parameters from per-view generators and applies a view's
chosen augmentations to a batch (like ``torchaudio.transforms``, but with
deterministic per-sample randomness).
"""
