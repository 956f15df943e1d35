"""What the encode job knows about its model before it runs (torch-free: the driver holds it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """What the job needs to know about a model before it runs."""

    sample_rate: int
    channels: int
    downsampling_ratio: int
    is_discrete: bool
    has_posterior: bool
    latent_channels: int  # D (continuous) or Q (codebooks): the first axis of what is stored
    latent_frames: int  # N = sample_size / downsampling_ratio: the last axis of what is stored
    frames_axis: int  # where encode() puts the frames: 2 ([B, D, N]), 1 ([B, N, Q]) or -1 ([B, N])
    codebook_size: int | None  # discrete models: tokens lie in [0, codebook_size) (None: unknown)
    output_dtype: str  # of encode(), at float32
    stored_dtype: str  # what the output holds: float32/float16 latents, the narrowest integer for tokens
    weights_sha256: str
    description: dict[str, Any]
    code_sha256: str = ""  # a factory's code ("" for the other kinds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
