"""Shared benchmark helpers: sample inputs, process-tree memory sampling, tables."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "audio" / "sonic-pi"


def make_clips(dest: Path, count: int, seconds: float = 4.0, sample_rate: int = 44100, source: Path = SHARED) -> Path:
    """``count`` FLAC inputs: the real recordings under ``source`` (cycled under new names), else
    generated tones."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.rglob("*.flac"))
    if len(existing) >= count:
        return dest
    real = sorted(source.rglob("*.flac")) if source.exists() else []
    rng = np.random.default_rng(0)
    for i in range(len(existing), count):
        target = dest / f"c{i // 500:03d}" / f"clip{i:06d}.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        if real:
            shutil.copy(real[i % len(real)], target)
        else:
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            x = 0.3 * np.sin(2 * np.pi * (100 + 10 * (i % 50)) * t) + 0.05 * rng.standard_normal(t.shape)
            sf.write(target, x.astype(np.float32), sample_rate)
    return dest


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.2)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class TreeCPU:
    """CPU seconds (user + system) used by this process and all its descendants (Ray's raylet,
    workers and actors) while the block runs, sampled every ``interval`` seconds so that
    processes that exit (finished actors) are counted up to their last sample; ``by_kind``
    splits them into the driver, the actors, the write tasks and Ray's own services. The
    sampling's own CPU (about 3 ms per sample of a dozen processes: 1.5 % of a core) is taken
    off the driver's: it is the benchmark's, not the job's."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.root = psutil.Process()
        self.seen: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.before: dict[int, float] = {}
        self.sampling = 0.0  # CPU seconds this object spent sampling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _kind(self, proc) -> str:
        if proc.pid == self.root.pid:
            return "driver"
        title = " ".join(proc.cmdline())
        if "MapWorker" in title:
            return "actors"
        if title.startswith("ray::IDLE") or "Write" in title:
            return "write tasks"
        return "Ray services"

    def _sample(self) -> dict[int, float]:
        started = time.thread_time()
        try:
            return self._read_processes()
        finally:
            self.sampling += time.thread_time() - started

    def _read_processes(self) -> dict[int, float]:
        out = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
                if self.kinds.get(proc.pid) not in ("driver", "actors"):
                    # An idle worker may become an actor: reclassify until it is the most specific.
                    self.kinds[proc.pid] = self._kind(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid, seconds in self._sample().items():
                self.seen[pid] = max(self.seen.get(pid, 0.0), seconds)

    def __enter__(self) -> TreeCPU:
        self.before = self._sample()
        self.sampling = 0.0  # the first sample ran before the driver's starting CPU was read
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for pid, seconds in self._sample().items():
            self.seen[pid] = max(self.seen.get(pid, 0.0), seconds)

    @property
    def seconds(self) -> float:
        return sum(self.by_kind.values())

    @property
    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.seen.items():
            kind = self.kinds.get(pid, "Ray services")
            out[kind] = out.get(kind, 0.0) + seconds - self.before.get(pid, 0.0)
        if "driver" in out:
            out["driver"] = max(0.0, out["driver"] - self.sampling)
        return out


def run_measured(args: list[str]) -> tuple[str, int]:
    """Run a child Python command; return its stdout and the peak RSS of its process tree."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with TreeMemory(proc.pid) as memory:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{err[-3000:]}")
    return out, memory.peak


def same_code_warning(ref: str) -> str | None:
    """A warning when the baseline ``ref`` is the code this checkout runs (``main`` on main, nothing
    changed): both columns would measure the same code."""

    def rev(name: str) -> str:
        done = subprocess.run(["git", "rev-parse", name], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    changed = subprocess.run(
        ["git", "status", "--porcelain", "ray_pipelines"], cwd=REPO, capture_output=True, text=True
    )
    if rev(ref) == rev("HEAD") and not changed.stdout.strip():
        return f"warning: --baseline {ref} is this checkout's code: both columns run the same; give another ref"
    return None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


@contextlib.contextmanager
def moto_s3(bucket: str = "bench") -> Iterator[tuple[dict, object]]:
    """A moto S3 server in this process (on 127.0.0.1) with ``bucket`` made: ``(storage_options, s3fs
    filesystem)``; stopped at the end."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"endpoint_url": f"http://{host}:{port}"}
        fs = s3fs.S3FileSystem(client_kwargs=options)
        fs.mkdir(bucket)
        yield options, fs
    finally:
        server.stop()
