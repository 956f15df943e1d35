"""The entrypoint of every RayJob and RayCronJob in cluster/, run as written against a local Ray head.

The head stands in for the Ray head pod the driver runs on:
- a directory laid out like the image: an empty working directory, the package installed (not
  editable, from the files docker/Dockerfile copies) and nothing of the repository on the path, so the
  configs come from the package by name or from the mount, never from a working_dir upload;
- the ConfigMap's files (documented in docs/operations.md) at the pod's mount path;
- the environment KubeRay gives the pod: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, and the Secret
  object-store-credentials, here pointing at a local S3 endpoint holding the manifests' bucket;
- one node with 2 CPUs playing the head and the CPU worker group (the head itself has num-cpus 0).

Each entrypoint is submitted with the shell command KubeRay's submitter runs (K8sJobMode), from an
environment without the object-store credentials, and must complete on sample FLAC audio.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipelines.config import load_config
from tests import deploy
from tests.audio_helpers import tone, write_audio
from tests.ray_head import RAY, local_head

pytestmark = pytest.mark.slow

BUCKET = "my-bucket"  # the manifests' bucket, as written
RAW_AUDIO = f"{BUCKET}/raw-audio"


def kuberay_submit_command(address: str, submission_id: str, entrypoint: str) -> str:
    """The submitter's shell command (KubeRay ray-operator/controllers/ray/common/job.go, K8sJobMode):
    submit only if the id is unknown, then follow the job's logs."""
    status = f"ray job status --address {address} {submission_id} >/dev/null 2>&1"
    submit = f"ray job submit --address {address} --no-wait --submission-id {submission_id} -- {entrypoint}"
    return f"if ! {status} ; then {submit} ; fi ; ray job logs --address {address} --follow {submission_id}"


def install_like_the_image(tmp: Path) -> Path:
    """`pip install` of the files the Dockerfile copies, into a folder of its own; returns that folder."""
    context = tmp / "context"
    for source in deploy.copied_sources():
        if source.endswith(".lock"):
            continue  # the dependencies: the test environment has the locked versions
        src, dst = deploy.REPO / source, context / source
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    site = tmp / "site-packages"
    # No build isolation: the environment's setuptools (torch requires >= 77, as pyproject.toml does) builds
    # the wheel without fetching anything.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(context),
        ],
        check=True,
        timeout=300,
    )
    return site


def mount_configmaps(root: Path) -> dict[str, Path]:
    """The documented ConfigMaps' files under ``root`` at their mount paths; ``{mount path: local dir}``."""
    docs = [doc for _, doc in deploy.manifests()]
    sources = deploy.documented_configmap_sources()
    mounts = {}
    for doc in docs:
        if deploy.job_spec(doc) is None:
            continue
        for mount_path, configmap in deploy.mounted_configmaps(deploy.driver_cluster(doc, docs)).items():
            local = root / mount_path.lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            for source in sources[configmap]:
                shutil.copy(source, local / source.name)
            mounts[mount_path] = local
    return mounts


@pytest.fixture
def bucket(s3_endpoint, tmp_path_factory):
    """The manifests' bucket on the local S3 endpoint, with two FLAC recordings under raw-audio/."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(BUCKET)
    audio = tmp_path_factory.mktemp("audio")
    for i, name in enumerate(["birds/dawn.flac", "street.flac"]):
        write_audio(audio / name, tone(1.5, freq=330.0 + 110 * i))
        fs.put(str(audio / name), f"{RAW_AUDIO}/{name}")
    yield fs
    fs.rm(BUCKET, recursive=True)


def output_of(entrypoint: str) -> str:
    """The output the entrypoint's job writes: its config loaded as the driver loads it."""
    argv = shlex.split(entrypoint)
    (config,) = deploy.option_values(argv, "--config")
    model = deploy.job_model(argv[1])
    return load_config(model, config, deploy.option_values(argv, "--set")).output.removeprefix("s3://")


def test_every_rayjob_and_raycronjob_entrypoint_completes_as_written(tmp_path, short_tmp, bucket, s3_endpoint):
    site = install_like_the_image(tmp_path)
    mounts = mount_configmaps(tmp_path / "pod")
    home = tmp_path / "home"  # the image's WORKDIR: nothing from the repository in it
    home.mkdir()
    token = secrets.token_urlsafe(32)
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("AWS_", "RAY_"))}
    path = f"{site / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # what KubeRay sets from its auth Secret
    object_store_secret = {  # the keys docs/operations.md puts into object-store-credentials
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
    }
    head_env = {**base, **auth, **object_store_secret, "PATH": path, "PYTHONPATH": str(site)}
    submitter_env = {**base, **auth, "PATH": path}

    # Each job's entrypoint as the head pod sees it: mounted files at their local place.
    jobs = {}
    for _, doc in deploy.manifests():
        if deploy.job_spec(doc):
            entrypoint = deploy.job_spec(doc)["entrypoint"]
            for mount_path, local in mounts.items():
                entrypoint = entrypoint.replace(mount_path, str(local))
            jobs[doc["metadata"]["name"]] = entrypoint
    assert len(jobs) == 2
    # Distinct outputs, so that each run has the inputs to process (a shared one would skip them).
    assert len({output_of(entrypoint) for entrypoint in jobs.values()}) == len(jobs)

    with local_head(short_tmp("ray"), head_env, cwd=home) as head:
        address = head.dashboard
        for name, entrypoint in jobs.items():
            submission_id = f"{name}-{secrets.token_hex(3)}"
            command = kuberay_submit_command(address, submission_id, entrypoint)
            submitted = subprocess.run(
                ["bash", "-ce", command], env=submitter_env, cwd=home, capture_output=True, text=True, timeout=900
            )
            log = submitted.stdout[-4000:] + submitted.stderr[-4000:]
            assert submitted.returncode == 0, log
            assert "augment job finished" in submitted.stdout, log
            status = subprocess.run(
                [RAY, "job", "status", "--address", address, submission_id],
                env=submitter_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert f"Job '{submission_id}' succeeded" in status.stdout, status.stdout + status.stderr

            output = output_of(entrypoint)
            assert bucket.exists(f"{output}/_SUCCESS")
            manifest = json.loads(bucket.cat(f"{output}/manifest.json"))
            counts = manifest["counts"]
            assert counts["listed"] == 2 and counts["inputs_with_output"] == 2 and counts["errors"] == 0
            assert counts["rows_written"] == 2 * manifest["config"]["num_versions"]

        # Token auth is on: what the right token was just allowed, a wrong one is refused.
        refused = subprocess.run(
            [RAY, "job", "list", "--address", address],
            env={**submitter_env, "RAY_AUTH_TOKEN": "not-the-token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr
