"""ray_pipelines: turn raw audio collections into ML-ready datasets on Ray.

The library is split by job to do, not by job name:

- ``config``, ``storage``, ``sources``: what to read and where to write.
- ``audio``: decoding windows of audio files (soundfile, PyAV fallback).
- ``seeding``, ``splits``: deterministic randomness and split assignment.
- ``augment``, ``spectrogram``: batched PyTorch signal processing.
- ``stages``: callable classes run in Ray Data actor pools (and without Ray).
- ``engine``: listing, resume, Ray Data plan, shard sink, manifests, commit.
- ``readers``: PyTorch datasets over the written shards.
"""

__version__ = "0.1.0"
