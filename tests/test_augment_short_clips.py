"""A clip shorter than the crop fills a few of its frames: the time mask never hides all of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ray_pipelines.augment.params import _PACKED_FIELDS, DRAWS_COLUMN, VALID_COLUMN, ViewParams, pack_views
from ray_pipelines.config import validate_config
from ray_pipelines.engine.decode import rows_to_batch
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.stages.augment import AugmentStage
from tests.audio_helpers import write_audio

SR, HOP = 22050, 512


def one_shot(seconds: float, seed: int = 0) -> np.ndarray:
    """A drum-like hit: partials and noise under a fast exponential decay."""
    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    tone = sum(np.sin(2 * np.pi * f * t) for f in (180.0, 410.0, 1250.0)) + 0.3 * rng.standard_normal(len(t))
    return (0.3 * tone * np.exp(-t / 0.04)).astype(np.float32)


def job(tmp_path: Path, **overrides) -> AugmentJob:
    return AugmentJob(validate_config(AugmentConfig, {"input": str(tmp_path), "output": "-", **overrides}))


def views(stage: AugmentStage, audio: np.ndarray, params: list[ViewParams], valid: int | None) -> np.ndarray:
    """Each view of ``params`` of the crop ``audio`` (view 1 of one row per view), ``[views, n_mels, frames]``;
    ``valid``: the crop's samples of audio, as the job's decode tasks give them (None: no such column)."""
    n = len(params)
    batch = {
        "key": np.array(["clip"] * n, dtype=object),
        "version": np.arange(n),
        "audio": np.repeat(audio[None], n, axis=0),
        "error": np.array([""] * n, dtype=object),
        DRAWS_COLUMN: np.stack([pack_views([p, ViewParams(waveform=(), spectrogram=())]) for p in params]),
    }
    if valid is not None:
        batch[VALID_COLUMN] = np.full(n, valid)
    return stage(batch)["view1"][:, 0]


def test_a_mask_over_all_of_a_short_clips_frames_starts_after_its_onset(tmp_path):
    """A 0.1 s clip (2205 samples) padded to 3 s: its audio is in frames 0-4 (the frames whose centre is nearest
    one of its samples). A time mask over all of them left a view of padding and the mask: it now starts after
    the first; a mask that leaves one of them visible, or a clip as long as the crop, is as it was."""
    stage = AugmentStage(**job(tmp_path).stage_kwargs(), device="cpu")
    crop = np.zeros(stage.num_samples, np.float32)
    crop[:2205] = one_shot(0.1)
    mask = dict(spectrogram=("time_mask",))
    shifted = dict(waveform=("time_shift", "time_stretch"), shift=50 * HOP, stretch_rate=1.25)
    params = [
        ViewParams(waveform=(), **mask),  # no mask: the reference
        ViewParams(waveform=(), masks={"time_mask": (0, 10)}, **mask),  # covers frames 0-9
        ViewParams(waveform=(), masks={"time_mask": (1, 10)}, **mask),  # frame 0 visible
        ViewParams(**shifted, **mask),  # no mask: the reference
        # the audio moved to frames 50-54, read by output frames 40-43 (m * 1.25): a mask over 38-45
        ViewParams(**shifted, masks={"time_mask": (38, 8)}, **mask),
        ViewParams(**shifted, masks={"time_mask": (41, 8)}, **mask),  # frame 40 visible
    ]
    fixed, before = views(stage, crop, params, 2205), views(stage, crop, params, None)
    fill = {1: fixed[0].mean(), 4: fixed[3].mean()}  # a masked frame takes the mean of the view before its masks
    assert np.all(before[1][:, :10] == fill[1]) and np.all(before[4][:, 38:46] == fill[4])  # no audio left
    assert np.array_equal(fixed[1][:, :1], fixed[0][:, :1]) and np.all(fixed[1][:, 1:10] == fill[1])
    assert np.array_equal(fixed[1][:, 10:], fixed[0][:, 10:])
    assert np.array_equal(fixed[4][:, :41], fixed[3][:, :41]) and np.all(fixed[4][:, 41:46] == fill[4])
    assert np.ptp(fixed[1][:, 0]) > 20 and np.ptp(fixed[4][:, 40]) > 20  # the onset: audio, not a constant
    for i in (0, 2, 3, 5):  # the others: byte for byte as before
        assert fixed[i].tobytes() == before[i].tobytes()
    full = np.tile(one_shot(0.1), 30)[: stage.num_samples]  # a clip as long as the crop: masks as drawn
    assert views(stage, full, params, stage.num_samples).tobytes() == views(stage, full, params, None).tobytes()


def test_the_jobs_views_of_a_short_clip_always_show_some_of_it(tmp_path):
    """The job's decode tasks say how much of each crop is audio (column valid_samples); of a 0.15 s one-shot's
    400 views, those whose time mask hid all of it (noise, a mask and nothing of the clip) now show its onset,
    and the others are as they were; a view changes only where it was masked."""
    write_audio(tmp_path / "hit.flac", one_shot(0.15), SR)
    augment = job(tmp_path, num_versions=200, waveform_pool={"noise": None})
    rows = augment.decoder().decode_input({"key": "hit.flac", "uri": str(tmp_path / "hit.flac")})
    batch = rows_to_batch(rows)
    assert list(batch["error"]) == [""] * 200 and set(batch[VALID_COLUMN].tolist()) == {3308}
    stage = AugmentStage(**augment.stage_kwargs(), device="cpu")
    fixed = stage(dict(batch))
    before = stage({k: v for k, v in batch.items() if k != VALID_COLUMN})
    unmasked_batch = dict(batch, **{DRAWS_COLUMN: batch[DRAWS_COLUMN].copy()})
    unmasked_batch[DRAWS_COLUMN][..., _PACKED_FIELDS.index("time_mask_width")] = 0
    unmasked = stage(unmasked_batch)
    hidden = changed = 0
    for view in ("view1", "view2"):
        for new, old, reference in zip(fixed[view][:, 0], before[view][:, 0], unmasked[view][:, 0]):
            if np.ptp(reference) == 0:
                continue  # shifted into the crop's end, then slowed down (time_stretch < 1): past its last frame
            holds_clip = reference.max(axis=0) > reference.max() - 60  # the padding is at the floor, 80 dB down
            assert np.any(np.ptp(new[:, holds_clip], axis=0) > 0)  # a time-masked frame is one constant
            if not np.any(np.ptp(old[:, holds_clip], axis=0) > 0):
                hidden += 1
                assert new.tobytes() != old.tobytes()
            if new.tobytes() != old.tobytes():
                changed += 1
                assert np.all(np.ptp(old[:, np.any(new != old, axis=0)], axis=0) == 0)  # only masked frames
    assert hidden >= 5 and changed <= hidden + 2
