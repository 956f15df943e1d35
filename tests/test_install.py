"""A non-editable install from a clean copy of the repository, used from another directory.

The wheel is built from the repository's files only (what a clean clone holds), installed into a
fresh venv that borrows this environment's third-party packages (added to its path after its own
site-packages, so the installed ray_pipelines wins and nothing is downloaded), and run from a
folder outside the repository: the packaged configs by name, the demo, nothing written into the
installed package.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipelines import __version__
from tests.audio_helpers import REPO, make_library

pytestmark = pytest.mark.slow


def clean_copy(dest: Path) -> Path:
    """The repository's files as a clean clone has them (tracked, plus new files not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / name.decode()
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = dest / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)  # keeps jobs/configs a link
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (bytecode caches aside) with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the project installed from a wheel of a clean copy; returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the repository's files")
    source = clean_copy(root / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            root / "wheels",
            source,
        ],
        check=True,
        cwd=root,
    )
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], check=True)
    python = root / "venv" / "bin" / "python"
    (wheel,) = (root / "wheels").glob("ray_pipelines-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        check=True,
        cwd=root,
    )
    # This environment's third-party packages, after the venv's own site-packages.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    (Path(purelib) / "borrowed_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python.parent


def run(bin_dir: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_installed_package_runs_from_another_directory_and_writes_only_there(installed, tmp_path):
    package = Path(
        run(installed, ["python", "-c", "import ray_pipelines; print(ray_pipelines.__file__)"], tmp_path).stdout.strip()
    ).parent
    assert package.parent.name == "site-packages" and REPO not in package.parents
    assert run(installed, ["python", "-c", "import jobs"], tmp_path).returncode != 0  # not installed
    before = snapshot(package)

    version = run(installed, ["ray-pipelines", "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith(f"ray-pipelines {__version__} ")
    listing = run(installed, ["ray-pipelines", "configs"], tmp_path)
    assert listing.returncode == 0 and "\n  teacher-synth " in listing.stdout

    # The demo, from a folder outside the repository: a packaged config by name, files written here.
    audio = tmp_path / "recordings"
    make_library(audio, n_per_format=1, seconds=1.0)
    demo = run(installed, ["python", "-m", "ray_pipelines.jobs.demo"], tmp_path, RAY_PIPELINES_DEMO_AUDIO=str(audio))
    assert demo.returncode == 0, demo.stderr
    assert "augment job finished" in demo.stdout
    assert (tmp_path / "demo-output" / "augment" / "_SUCCESS").exists()
    assert len(list((tmp_path / "demo-audio").rglob("*.*"))) == 4

    # A job by name with --config, from another folder again, on relative paths; --verbose shows Ray's logs.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = run(
        installed,
        ["ray-pipelines", "augment", "--config", "augment", "--set", "input=../demo-audio", "--set", "output=views"]
        + ["--verbose"],
        elsewhere,
    )
    assert job.returncode == 0, job.stderr
    assert "core_worker.cc" in job.stderr and "Starting execution of Dataset" in job.stderr
    assert (elsewhere / "views" / "_SUCCESS").exists()

    assert snapshot(package) == before, "something wrote into the installed package"
