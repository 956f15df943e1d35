"""When the output store itself fails (full, read-only, credentials rejected) the run stops early
with the store's own error (exit 1) and keeps what it committed; configs that would leak a secret,
read their own output or list nothing are refused before anything is written."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.engine.control import OutputStoreError
from ray_pipelines.engine.runner import _where_relative_inputs_were_read, run_job, submitted_relative_output
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.sources import SourceError
from ray_pipelines.storage import RAY_JOB_CONFIG_ENV, in_ray_job_supervisor_folder
from tests.audio_helpers import REPO, tone, write_audio
from tests.conftest import Lines, wait_for_other_drivers_actors
from tests.output_helpers import Store, committed_rows

# Rows of about 64 KiB (uncompressed): a few fill a 512 KiB tmpfs.
BIG_ROWS = dict(
    num_versions=4,
    duration=2.0,
    sample_rate=16000,
    n_mels=64,
    n_fft=512,
    hop_length=256,
    compression="none",
    inputs_per_block=1,
    actors=1,
    seed=2,
)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_pipelines.cli", "augment", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a small tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


class BlockErrors(logging.Handler):
    """What Ray Data logs about failed blocks (their exceptions included)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(
            record.getMessage()
            + "\n"
            + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        )


@pytest.fixture
def clips(tmp_path) -> Path:
    for i in range(6):
        write_audio(tmp_path / "in" / f"clip{i}.flac", tone(2.0, 16000, freq=200.0 + 40 * i), 16000)
    return tmp_path / "in"


def test_a_full_disk_stops_the_run_with_the_os_error_and_keeps_what_was_committed(
    mount_tmpfs, clips, tmp_path, ray_local
):
    disk = mount_tmpfs("full", "size=512k")
    cfg = validate_config(AugmentConfig, {"input": str(clips), "output": str(disk / "out"), **BIG_ROWS})
    blocks = BlockErrors()
    logging.getLogger("ray.data").addHandler(blocks)
    try:
        with pytest.raises(OutputStoreError, match=r"^write failed: No space left on device: .*full/out") as failed:
            run_job(AugmentJob(cfg), progress=False)
    finally:
        logging.getLogger("ray.data").removeHandler(blocks)
    assert "\n" not in str(failed.value)
    # The blocks after the failure stopped before decoding anything (one actor: they come in turn).
    assert any("run stopped (store): write failed: No space left on device" in text for text in blocks.texts)
    assert not (disk / "out" / "_SUCCESS").exists() and not (disk / "out" / "manifest.json").exists()
    committed = list((disk / "out" / "_manifests").glob("part-*.json"))
    assert 1 <= len(committed) < 6  # the blocks before the disk filled up are kept

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space again
    resumed = run_job(AugmentJob(cfg), progress=False)
    assert resumed.complete and resumed.counts["skipped_already_committed"] == len(committed)
    reference = validate_config(AugmentConfig, {"input": str(clips), "output": str(tmp_path / "ref"), **BIG_ROWS})
    assert run_job(AugmentJob(reference), progress=False).complete
    store = Store.local(tmp_path)
    assert committed_rows(store, "full/out", "key", "version") == committed_rows(store, "ref", "key", "version")


def test_a_full_disk_on_the_console_is_one_warning_and_the_last_line_not_a_traceback_per_block(
    mount_tmpfs, clips, on_session_ray
):
    """Before: every block that failed on the full disk, or stopped because of it, printed Ray Data's
    traceback (some 50 lines each); a run with many blocks in flight filled the screen."""
    disk = mount_tmpfs("full", "size=512k")
    done = run_cli(
        "--set",
        f"input={clips}",
        "--set",
        f"output={disk / 'out'}",
        *sum((["--set", f"{k}={v}"] for k, v in BIG_ROWS.items()), []),
        env={**os.environ, **on_session_ray},
    )
    wait_for_other_drivers_actors()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ray-pipelines augment: write failed: No space left on device: ")
    assert "Traceback" not in done.stderr and "UserCodeException" not in done.stderr, done.stderr
    stopping = [line for line in lines if "the run is stopping: write failed: No space left on device" in line]
    assert len(stopping) == 1 and stopping[0].startswith("WARNING "), done.stderr


def test_a_read_only_output_exits_1_with_the_os_error(mount_tmpfs, clips):
    disk = mount_tmpfs("ro", "size=1m,ro")
    done = run_cli("--set", f"input={clips}", "--set", f"output={disk}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ray-pipelines augment: write failed: Read-only file system")


def test_rejected_credentials_exit_1_with_the_store_error(clips, credential_checking_s3_endpoint):
    endpoint = f"{{endpoint_url: '{credential_checking_s3_endpoint}'}}"
    done = run_cli("--set", f"input={clips}", "--set", "output=s3://views/out", "--set", f"storage_options={endpoint}")
    assert done.returncode == 1, done.stderr
    assert "write failed: The AWS Access Key Id you provided does not exist in our records" in done.stderr


def test_an_output_bucket_that_does_not_exist_exits_1_with_the_store_error(clips, s3_endpoint):
    # Its lease's conditional PUT fails as a lost race would (s3fs: FileNotFoundError): told apart by the code.
    endpoint = f"{{endpoint_url: '{s3_endpoint}'}}"
    done = run_cli(
        "--set", f"input={clips}", "--set", "output=s3://no-such-bucket/out", "--set", f"storage_options={endpoint}"
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ray-pipelines augment: write failed: The specified bucket does not exist: s3://no-such-bucket/out"
    )


def test_nested_secrets_are_refused_and_nothing_is_written(clips, tmp_path):
    out = tmp_path / "out"
    leaked = "{endpoint_url: 'http://127.0.0.1:9', client_kwargs: {aws_secret_access_key: hunter2}}"
    done = run_cli("--set", f"input={clips}", "--set", f"output={out}", "--set", f"storage_options={leaked}")
    assert done.returncode == 2 and "client_kwargs.aws_secret_access_key" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout and not out.exists()
    for options in (
        {"s3_additional_kwargs": {"SSECustomerKey": "k"}},
        {"config_kwargs": {"session_token": "t"}},
        {"client_kwargs": {"endpoint_url": "http://user:pass@host:9000"}},
        {"anything": [{"password": "p"}]},
        {"client_kwargs": {"headers": {"Authorization": "Bearer hf_x"}}},  # an https:// input's headers
        {"client_kwargs": {"headers": {"Cookie": "session=x"}}},
    ):
        with pytest.raises(ValueError, match="must not hold secrets"):
            validate_config(AugmentConfig, {"input": "a", "output": "b", "storage_options": options})
    fine = {"endpoint_url": "http://h", "s3_additional_kwargs": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "x"}}
    validate_config(AugmentConfig, {"input": "a", "output": "b", "storage_options": fine})


def test_an_input_that_matches_nothing_exits_1_unless_allowed(tmp_path):
    (tmp_path / "in").mkdir()
    done = run_cli("--set", f"input={tmp_path}/in/*.flaac", "--set", f"output={tmp_path}/out")
    assert done.returncode == 1 and "no inputs matched" in done.stderr and "*.flaac" in done.stderr
    empty = validate_config(
        AugmentConfig, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "allow_empty": True}
    )
    result = run_job(AugmentJob(empty), progress=False)  # nothing to do: Ray is never started
    assert result.complete and result.counts["listed"] == 0 and (tmp_path / "out" / "_SUCCESS").exists()


def test_in_a_submitted_jobs_working_dir_copy_a_relative_output_is_refused_and_missing_inputs_explained(
    tmp_path, monkeypatch
):
    """Where Ray unpacks `--working-dir .` for a job's driver (test_job_submit submits one for real): the
    packaged configs' relative output completed there, exit 0, and Ray deleted it with the copy; their
    relative input (gitignored, so never uploaded) was 'input not found' without a word why."""
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    refused = validate_config(AugmentConfig, {"input": "demo-audio", "output": "demo-output/augment"})
    with pytest.raises(ConfigError, match=f"^output demo-output/augment is inside {copy}, the copy of the working"):
        run_job(AugmentJob(refused), progress=False)
    missing = validate_config(AugmentConfig, {"input": "demo-audio", "output": str(tmp_path / "views")})
    with pytest.raises(SourceError) as error:
        run_job(AugmentJob(missing), progress=False)
    assert str(error.value) == (
        f"input not found: demo-audio (relative inputs such as demo-audio are read in {copy}, Ray's copy of the "
        "working directory, which leaves out what .gitignore names: give an absolute path or a URL)"
    )
    assert sorted(p.name for p in copy.iterdir()) == []
    # the data folder kept in git by a .gitkeep, its audio gitignored: there, but empty
    (copy / "demo-audio").mkdir()
    (copy / "demo-audio" / ".gitkeep").touch()
    with pytest.raises(SourceError) as error:
        run_job(AugmentJob(missing), progress=False)
    assert str(error.value).endswith(
        f"(relative inputs such as demo-audio are read in {copy}, Ray's copy of the working directory, which leaves "
        "out what .gitignore names: give an absolute path or a URL)"
    )


@pytest.mark.parametrize(
    ("scheme", "below", "said"),
    [
        ("", "", "is a file: give the folder (or prefix) the job writes its output into"),
        # was "the job could not run: NotADirectoryError: [Errno 20] Not a directory", exit 1
        ("", "/run1/out", "is below {taken}, which is a file: no folder can be made there"),
        ("file://", "/run1/out", "is below {taken}, which is a file: no folder can be made there"),
    ],
)
def test_an_output_that_is_or_lies_below_a_file_is_refused_and_the_file_left_alone(
    clips, tmp_path, scheme, below, said
):
    taken = tmp_path / "views"
    taken.write_text("a file already here")
    done = run_cli("--set", f"input={clips}", "--set", f"output={scheme}{taken}{below}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ray-pipelines augment: output {scheme}{taken}{below} " + said.format(taken=taken)
    )
    assert taken.read_text() == "a file already here"


# A stand-in for Ray's job supervisor (its process title holds "JobSupervisor"): it starts the entrypoint, a
# Python process that says what the runner would refuse, in each folder named on its command line.
SUPERVISOR = """
import os, subprocess, sys
child = "from ray_pipelines.engine.runner import submitted_relative_output as s; print(s('views') or '-')"
for where in sys.argv[1:3]:
    subprocess.run([sys.executable, "-c", child], cwd=where, check=True, env={**os.environ, sys.argv[3]: "{}"})
"""


def test_a_relative_output_is_refused_only_where_the_submitted_driver_still_runs_in_the_supervisors_folder(
    tmp_path, monkeypatch
):
    """Ray's job variable reaches whatever a submitted entrypoint starts: `bash -c "cd /mnt/proj && ray-pipelines
    ... output=views"` means /mnt/proj/views and is left alone; a driver in the supervisor's folder (where the
    head was started) is refused (tests/test_job_submit.py: the same on a real head)."""
    head, project = tmp_path / "where-ray-start-ran", tmp_path / "proj"
    head.mkdir(), project.mkdir()
    monkeypatch.chdir(head)
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, str(head), str(project), RAY_JOB_CONFIG_ENV, "ray::JobSupervisor"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    in_head, in_project = done.stdout.splitlines()
    assert in_head.startswith(f"output views is relative, and this submitted job's driver runs in {head} (where")
    assert in_project == "-"
    # no supervisor at all (a script's own subprocess with the variable inherited): left alone too
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, "{}")
    assert in_ray_job_supervisor_folder() == "" and submitted_relative_output("views") == ""
    assert _where_relative_inputs_were_read(["clips"]) == ""


def test_an_output_inside_the_input_tree_is_refused(clips):
    done = run_cli("--set", f"input={clips}/**/*.flac", "--set", f"output={clips}/derived")
    assert done.returncode == 2 and "overlaps input" in done.stderr
    assert not (clips / "derived").exists()


def test_store_failures_are_told_apart_from_other_errors():
    from botocore.exceptions import ClientError

    from ray_pipelines.engine.control import store_failure

    assert (
        store_failure(OSError(28, "No space left on device", "/o/x")) == "write failed: No space left on device: /o/x"
    )
    assert store_failure(PermissionError("Access Denied")) == "write failed: Access Denied"
    assert store_failure(ConnectionError("reset")) == "" and store_failure(FileNotFoundError(2, "gone")) == ""
    no_bucket = FileNotFoundError("The specified bucket does not exist")  # as s3fs raises it, from botocore's
    no_bucket.__cause__ = ClientError({"Error": {"Code": "NoSuchBucket"}, "ResponseMetadata": {}}, "PutObject")
    assert store_failure(no_bucket) == "write failed: The specified bucket does not exist"
    wrapped = RuntimeError("block failed")
    wrapped.__cause__ = OSError(30, "Read-only file system")
    assert store_failure(wrapped) == "write failed: Read-only file system"


SMALL = dict(num_versions=1, duration=1.0, sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)


def test_an_output_inside_another_runs_output_is_refused_and_one_moved_there_keeps_its_files(
    clips, tmp_path, ray_local
):
    """``output=/data/views/v2`` beside a nightly ``/data/views``: the outer run's next commit deleted every
    data file of v2 (its own manifests do not name them) and v2 was stuck at exit 1 with its _SUCCESS."""

    def run(output: Path, limit: int):
        config = validate_config(AugmentConfig, {"input": str(clips), "output": str(output), "limit": limit, **SMALL})
        done = run_job(AugmentJob(config), progress=False)
        assert done.complete
        return done

    outer, elsewhere = tmp_path / "views", tmp_path / "views-v2"
    run(outer, 2)
    small = [a for key, value in SMALL.items() for a in ("--set", f"{key}={value}")]
    refused = run_cli(*small, "--set", f"input={clips}", "--set", f"output={outer}/v2")  # the CLI's refusal
    assert refused.returncode == 2, refused.stderr
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(f"ray-pipelines augment: output {outer}/v2 is inside {outer}, another run's output (its _job.json)")
    )
    assert not (outer / "v2").exists()
    # An output made elsewhere and moved in (or made there before such outputs were refused) keeps its files.
    run(elsewhere, 1)
    elsewhere.rename(outer / "v2")
    nested = sorted(p.relative_to(outer) for p in (outer / "v2").rglob("part-*"))
    assert any(p.suffix == ".parquet" for p in nested)
    run(outer, 4)
    assert sorted(p.relative_to(outer) for p in (outer / "v2").rglob("part-*")) == nested
    # Such an output already there resumes (with a warning): its files are safe, only new ones are refused.
    said, logger = Lines(), logging.getLogger("ray_pipelines.engine.runner")
    logger.addHandler(said)
    try:
        run(outer / "v2", 2)
    finally:
        logger.removeHandler(said)
    assert any(line.startswith(f"output {outer}/v2 is inside {outer}, another run's output") for line in said.lines)


def test_an_output_inside_another_runs_output_is_found_on_s3(s3_bucket):
    from ray_pipelines.engine.manifest import enclosing_output
    from ray_pipelines.storage import Storage

    bucket, options, fs = s3_bucket
    fs.pipe(f"{bucket}/data/views/_job.json", b"{}")
    assert enclosing_output(Storage(f"s3://{bucket}/data/views/v2/x", options)) == f"s3://{bucket}/data/views"
    assert enclosing_output(Storage(f"s3://{bucket}/data/views", options)) is None  # its own claim
    assert enclosing_output(Storage(f"s3://{bucket}/data/views-v2", options)) is None
