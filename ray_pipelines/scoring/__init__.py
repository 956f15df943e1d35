"""Quality scores for spectrogram datasets and the outlier filters built on them.

- ``functional``: pure tensor functions (signal energy, reconstruction MSE, seeded patch masks).
- ``models``: the reconstruction-model interface, the built-in reference masked
  autoencoder, and loaders for user models (TorchScript, ``module:factory`` + checkpoint).
- ``inputs``: what the score job reads (audio files, ``.pt`` folders, other jobs' shards).
- ``filters``: bounds from the train split (median/IQR, mean/std, percentile, hardcode).
- ``groups``: majority vote of item labels per group.
- ``summary`` / ``plots``: per-split statistics, the summary CSV, histogram PNGs.
- ``table`` / ``report``: the stored scores, and every file a filter run writes.
"""
