"""``make demo``: the augment job end to end on embedded Ray and local files.

Works in the current directory (never inside the installed package): copies
the real recordings shipped beside the repo (``../shared/audio``, or the folder
``RAY_PIPELINES_DEMO_AUDIO`` names) into ``demo-audio/``, or, where there are
none, writes a small library of generated tones; then runs the augment job with
the packaged ``augment`` config into ``demo-output/augment`` and prints the
summary.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO = Path("demo-audio")
OUTPUT = Path("demo-output") / "augment"


def shared_recordings() -> Path:
    """Where real recordings may be: ``RAY_PIPELINES_DEMO_AUDIO``, else ``../shared/audio/sonic-pi``."""
    return Path(os.environ.get("RAY_PIPELINES_DEMO_AUDIO") or Path.cwd().parent / "shared" / "audio" / "sonic-pi")


def copy_writable(source: Path, dest: Path, ignore=None) -> None:
    """``source``'s tree into ``dest``, the copies writable whatever ``source``'s modes: a read-only collection
    gave read-only copies (copytree keeps modes), which `make clean` could not delete without root."""
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=ignore, copy_function=shutil.copyfile)
    for folder, _, files in os.walk(dest):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def make_sample_audio(dest: Path = AUDIO) -> Path:
    """Sample audio for the demo: real recordings when present, else generated tones."""
    if dest.exists() and any(dest.rglob("*.*")):
        return dest
    shared = shared_recordings()
    if os.environ.get("RAY_PIPELINES_DEMO_AUDIO") and not shared.is_dir():
        print(f"RAY_PIPELINES_DEMO_AUDIO={shared} is not a folder: the demo runs on generated tones", flush=True)
    if shared.is_dir():
        copy_writable(shared, dest, ignore=shutil.ignore_patterns("*.md"))
        if any(dest.rglob("*.*")):
            return dest
        print(f"{shared} holds no recordings: the demo runs on generated tones", flush=True)
    rng = np.random.default_rng(0)
    for label, base in (("low", 110.0), ("mid", 440.0), ("high", 1760.0)):
        for i in range(8):
            t = np.arange(int(44100 * (1.0 + i * 0.5))) / 44100
            x = 0.4 * np.sin(2 * np.pi * base * (1 + 0.05 * i) * t) + 0.02 * rng.standard_normal(t.shape)
            (dest / label).mkdir(parents=True, exist_ok=True)
            sf.write(dest / label / f"{label}_{i}.flac", x.astype(np.float32), 44100)
    return dest


def main(argv: list[str] | None = None) -> int:
    from ray_pipelines.cli import run_job_command

    args = sys.argv[1:] if argv is None else argv
    if args:  # (`--help`, or anything else: the demo takes no arguments, and ran the job whatever they were)
        print(
            "usage: python -m jobs.demo   (make demo): sample audio to demo-audio/, then the augment job on it to "
            f"{OUTPUT}/ in this folder; run `ray-pipelines augment --help` for the job's own settings",
            file=sys.stderr if args not in (["--help"], ["-h"]) else sys.stdout,
        )
        return 0 if args in (["--help"], ["-h"]) else 2
    audio = make_sample_audio()
    print(f"demo: sample audio in {audio}")
    return run_job_command(
        "augment",
        ["--config", "augment", "--set", f"input={audio.resolve()}", "--set", f"output={OUTPUT.resolve()}"],
        program=True,
    )


if __name__ == "__main__":
    sys.exit(main())
