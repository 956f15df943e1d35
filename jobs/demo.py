"""``make demo``: the augment job end to end on embedded Ray and local files.

Copies the real recordings shipped beside the repo (../shared/audio) into
demo-audio/, or, where they are absent, writes a small library of generated
tones; then runs the augment job from jobs/configs/augment.yaml into
demo-output/augment and prints the summary.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "audio" / "sonic-pi"
AUDIO = REPO / "demo-audio"
OUTPUT = REPO / "demo-output" / "augment"


def make_sample_audio(dest: Path = AUDIO) -> Path:
    """Sample audio for the demo: real recordings when present, else generated tones."""
    if dest.exists() and any(dest.rglob("*.*")):
        return dest
    if SHARED.exists():
        shutil.copytree(SHARED, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
        return dest
    rng = np.random.default_rng(0)
    for label, base in (("low", 110.0), ("mid", 440.0), ("high", 1760.0)):
        for i in range(8):
            t = np.arange(int(44100 * (1.0 + i * 0.5))) / 44100
            x = 0.4 * np.sin(2 * np.pi * base * (1 + 0.05 * i) * t) + 0.02 * rng.standard_normal(t.shape)
            (dest / label).mkdir(parents=True, exist_ok=True)
            sf.write(dest / label / f"{label}_{i}.flac", x.astype(np.float32), 44100)
    return dest


def main() -> int:
    from ray_pipelines.cli import run_job_command

    audio = make_sample_audio()
    print(f"demo: sample audio in {audio}")
    return run_job_command("augment", ["--config", str(REPO / "jobs/configs/augment.yaml"),
                                       "--set", f"input={audio}", "--set", f"output={OUTPUT}"])


if __name__ == "__main__":
    sys.exit(main())
