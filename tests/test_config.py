"""Config validation: clear errors naming the key, before any work starts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from ray_pipelines.config import ConfigError, load_config, parse_overrides, validate_config
from ray_pipelines.jobs.augment import AugmentConfig
from ray_pipelines.storage import get_fs, url_problem

REPO_ARGS = ["--set", "input=/tmp/in", "--set", "output=/tmp/out"]


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_mirror_the_notebook(tmp_path):
    cfg = load_config(AugmentConfig, write(tmp_path, "input: a\noutput: b\n"))
    assert (cfg.num_versions, cfg.sample_rate, cfg.n_mels, cfg.duration) == (5, 22050, 128, 3.0)
    assert (cfg.num_waveform_augs, cfg.num_spectrogram_augs, cfg.val_fraction) == (3, 2, 0.2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("input: a\noutput: b\nnum_verions: 3\n", "num_verions: unknown key"),
        ("input: a\noutput: b\nnum_versions: 0\n", "num_versions: Input should be greater than or equal to 1"),
        ("output: b\n", "input: required key is missing"),
        (
            "input: a\noutput: b\nwaveform_pool: {gain: {min_db: 3, max_db: 1}}\n",
            "gain.min_db (3.0) is larger than gain.max_db",
        ),
        ("input: a\noutput: b\nnum_waveform_augs: 12\n", "num_waveform_augs (12) exceeds"),
        ("input: a\noutput: b\nstorage_options: {secret: x}\n", "must not hold secrets (secret)"),
        ("input: a\noutput: b\nwaveform_pool: {gain: {min_dB: 3}}\n", "waveform_pool.gain.min_dB: unknown key"),
        ("- just\n- a list\n", "must hold a mapping"),
        # an empty path would be the working directory: read from or written into wherever the job started
        ("input: ''\noutput: b\n", "\n  input: empty: give a path or URL (got '')"),
        ("input: a\noutput: ' '\n", "\n  output: empty: give a path or URL (got ' ')"),
        ("input: []\noutput: b\n", "\n  input: an empty list: give at least one path or URL (got [])"),
        ("input: [a, '']\noutput: b\n", "\n  input: an empty path in the list (got ['a', ''])"),
        ("input: a\noutput: b\nkeep_list: ''\n", "\n  keep_list: empty: give a path or URL"),
        # a union's members told as one key: what it should be, or the member that got further
        ("input: 5\noutput: b\n", "invalid config:\n  input: should be a string or a list (got 5)"),
        (
            "input: a\noutput: b\nactors: abc\n",
            "invalid config:\n  actors: should be an integer or a mapping (got 'abc')",
        ),
        (
            "input: a\noutput: b\nactors: {min: 3, max: 1}\n",
            "invalid config:\n  actors: actors.max (1) is smaller than",
        ),
        ("input: a\noutput: b\nactors: {min: 0}\n", "invalid config:\n  actors.min: Input should be greater than or"),
        ("input: a\noutput: b\nactors: {mn: 1}\n", "invalid config:\n  actors.mn: unknown key; did you mean min?"),
        # a URL no installed filesystem serves, refused before the output is claimed (it was refused only
        # after: an ImportError from the listing, a connection error on an http output's lease)
        (
            "input: gs://b/x\noutput: b\n",
            "\n  input: gs:// needs a package that is not installed: Please install gcsfs",
        ),
        ("input: [a, 'foo://x']\noutput: b\n", "\n  input: foo:// is no storage protocol fsspec knows"),
        ("input: a\noutput: 'https://h/o'\n", "\n  output: https:// is read-only here: write to a local path"),
        ("input: a\noutput: b\nkeep_list: 'az://c/k.txt'\n", "\n  keep_list: az:// needs a package"),
        # one slash short: was a local folder named "s3:" in the working directory
        (
            "input: a\noutput: 's3:/bucket/out'\n",
            "\n  output: a local folder named s3:, not a URL; did you mean s3://bucket/out?",
        ),
        (
            "input: 'file:/data/in'\noutput: b\n",
            "\n  input: a local folder named file:, not a URL; did you mean /data/in?",
        ),
        # no colon, no slash, upper case: a local folder again (s3//b: the colon missing wrote ./s3/b, exit 0)
        (
            "input: a\noutput: 's3//bucket/out'\n",
            "\n  output: a local folder named s3, not a URL; did you mean s3://bucket/out?",
        ),
        (
            "input: a\noutput: 's3:bucket/out'\n",
            "\n  output: a local folder named s3:, not a URL; did you mean s3://bucket/out?",
        ),
        (
            "input: 'S3://bucket/in'\noutput: b\n",
            "\n  input: S3:// is no storage protocol fsspec knows; did you mean s3://?",
        ),
        # spectrogram rows without signal: all of them (f_min above f_max) or the bands no STFT bin falls in
        ("input: a\noutput: b\nf_min: 5000\nf_max: 4000\n", "\n  (root): f_min (5000.0) must be below f_max (4000.0)"),
        ("input: a\noutput: b\nf_min: 12000\n", "f_min (12000.0) must be below f_max (11025.0, Nyquist)"),
        ("input: a\noutput: b\nf_max: 30000\n", "f_max (30000.0) is above Nyquist (11025.0)"),
        (
            "input: a\noutput: b\nsample_rate: 44100\nn_fft: 512\n",
            "n_mels (128) is more mel bands than n_fft 512 resolves at 44100 Hz from 0 to 22050 Hz: 11 of them "
            "would hold no frequency bin (rows of the floor value in every spectrogram); use n_mels 91 or fewer",
        ),
        # a validator's own words, without pydantic's "Value error, " before them
        ("input: a\noutput: b\nstorage_options: {token: x}\n", "\n  storage_options: storage_options must not"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(AugmentConfig, write(tmp_path, text))
    assert message in str(error.value)
    assert "function-after" not in str(error.value) and ".int:" not in str(error.value)  # no union member tags


def test_a_url_with_a_password_is_refused_without_showing_the_password(tmp_path):
    for text in (
        "input: 'https://u:hunter2@h/x'\noutput: b\n",
        "input: [a, 'https://u:hunter2@h/x']\noutput: b\n",
        "input: a\noutput: 's3://key:hunter2@bucket/out'\n",
        "input: a\noutput: b\nkeep_list: 'https://u:hunter2@h/keep.txt'\n",
    ):
        with pytest.raises(ConfigError) as error:
            load_config(AugmentConfig, write(tmp_path, text))
        assert "holds credentials (user:password@)" in str(error.value) and ":***@" in str(error.value)
        assert "hunter2" not in str(error.value), text


def test_overrides_are_typed_and_nested(tmp_path):
    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=x"]) == {"a": {"b": 3}, "c": [1, 2], "d": "x"}
    cfg = load_config(
        AugmentConfig,
        write(tmp_path, "input: a\noutput: b\n"),
        ["waveform_pool.gain=null", "dtype=float16", "num_versions=2"],
    )
    assert cfg.waveform_pool.gain is None and cfg.dtype == "float16" and cfg.num_versions == 2
    with pytest.raises(ConfigError, match="expects key=value"):
        parse_overrides(["novalue"])


def test_a_mapping_set_whole_replaces_the_configs_and_a_dotted_key_changes_one_entry(tmp_path):
    """`--set splits={train: 0.8, test: 0.2}` was merged into the packaged config's three splits:
    "split fractions must sum to 1, they sum to 1.1" for fractions that sum to 1."""
    from ray_pipelines.jobs.features import FeaturesConfig

    required = ["input=a", "output=b"]
    assert load_config(FeaturesConfig, "features", [*required, "splits={train: 0.8, test: 0.2}"]).splits == {
        "train": 0.8,
        "test": 0.2,
    }
    changed = load_config(FeaturesConfig, "features", [*required, "splits.train=0.6", "splits.test=0.3"])
    assert changed.splits == {"train": 0.6, "validate": 0.1, "test": 0.3}
    config = write(tmp_path, "input: a\noutput: b\nstorage_options: {anon: true, client_kwargs: {region_name: eu}}\n")
    endpoint = "client_kwargs: {endpoint_url: 'http://127.0.0.1:9000'}"
    replaced = load_config(AugmentConfig, config, [f"storage_options={{{endpoint}}}"]).storage_options
    assert replaced == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    merged = load_config(AugmentConfig, config, ["storage_options.client_kwargs.endpoint_url=http://127.0.0.1:9000"])
    assert merged.storage_options == {
        "anon": True,
        "client_kwargs": {"region_name": "eu", "endpoint_url": "http://127.0.0.1:9000"},
    }
    # a dotted key under one the config leaves null
    assert load_config(AugmentConfig, write(tmp_path, "input: a\noutput: b\nactors: null\n"), ["actors.min=1"]).actors


def test_set_values_yaml_would_cut_refuse_or_retype_are_the_text_typed(tmp_path):
    from ray_pipelines.config import override_value

    assert override_value("3") == 3 and override_value("[a, b]") == ["a", "b"] and override_value("null") is None
    assert override_value("[a, 'b #c']") == ["a", "b #c"]  # a quoted # is no comment
    # not YAML: an alias, a directive, a reserved indicator (each a traceback before), a broken list
    for text in ("*.flac", "**/*.wav", "%20x", "@eaDir/a.wav", "`x", "[a"):
        assert override_value(text) == text
    # a comment would have cut the text: /data/take #1 was /data/take, #x was null
    assert override_value("/data/take #1") == "/data/take #1" and override_value("#x") == "#x"
    config = write(tmp_path, "input: a\noutput: b\n")
    for typed in ("0123", "yes", "take: 2", "1e3"):  # YAML read 83, True, a mapping, 1000.0
        assert load_config(AugmentConfig, config, [f"output={typed}"]).output == typed
    assert load_config(AugmentConfig, config, ["input=0777"]).input == "0777"  # a union with str
    with pytest.raises(ConfigError, match="num_versions: Input should be a valid integer"):
        load_config(AugmentConfig, config, ["num_versions=[3]"])  # wants a number: not taken as text
    with pytest.raises(ConfigError, match="output: Input should be a valid string"):
        load_config(AugmentConfig, config, ["output=null"])  # null stays null: no folder named null


def test_a_home_folder_in_a_config_file_is_the_home_folder(tmp_path, monkeypatch):
    """YAML leaves ``~/clips`` as it is (only a shell expands it); it was a folder named ``~`` in the
    current directory: "input not found: ~/clips", and an output written under ./~/."""
    monkeypatch.setenv("HOME", str(tmp_path))
    text = "input: [~/clips, s3://bucket/~x]\noutput: ~/views\nkeep_list: ~/keep.txt\n"
    cfg = load_config(AugmentConfig, write(tmp_path, text))
    assert cfg.input == [f"{tmp_path}/clips", "s3://bucket/~x"]
    assert (cfg.output, cfg.keep_list) == (f"{tmp_path}/views", f"{tmp_path}/keep.txt")
    assert get_fs("~/model.pt")[1] == f"{tmp_path}/model.pt"  # model and list files named in any config


def test_fingerprint_ignores_runtime_keys_only(tmp_path):
    base = load_config(AugmentConfig, None, ["input=a", "output=b"])
    runtime = load_config(AugmentConfig, None, ["input=other", "output=b", "limit=3", "actors=2", "batch_size=4"])
    changed = load_config(AugmentConfig, None, ["input=a", "output=b", "n_mels=64"])
    assert base.fingerprint() == runtime.fingerprint()
    assert base.fingerprint() != changed.fingerprint()
    assert base.fingerprint() != base.fingerprint({"weights": "abc"})


def test_cli_exits_2_on_a_bad_config_before_starting_ray(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.augment", "--config", str(write(tmp_path, "input: a\n"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "output: required key is missing" in result.stderr
    assert "ray" not in result.stdout.lower()


def test_cli_exits_1_when_the_input_cannot_be_listed(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_pipelines.cli",
            "augment",
            "--set",
            f"input={tmp_path}/missing",
            "--set",
            f"output={tmp_path}/out",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "input not found" in result.stderr


def test_a_stop_while_a_failed_run_shuts_ray_down_keeps_the_failures_exit_code(tmp_path, monkeypatch):
    """A SIGTERM while Ray shut down after a failure raised out of the CLI: exit 143 ("stopped, rerun to
    resume") instead of the failure's 1, which asks for a fix."""
    import os
    import signal

    import ray_pipelines.cli as cli

    def shutdown_stopped() -> None:  # the stop arrives in Ray's shutdown (seconds on an embedded Ray)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "_ray_running", lambda: False)  # this test's own Ray, if any, is not the run's
    monkeypatch.setattr(cli, "_shutdown_ray", shutdown_stopped)
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = cli.run_job_command("augment", ["--set", f"input={tmp_path}/missing", "--set", f"output={tmp_path}/out"])
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert code == 1


def test_float_keys_are_finite_and_actors_at_least_one():
    """duration: .inf raised OverflowError out of the augment config's own checks (a traceback, exit 1);
    offset: .inf, mean: .nan and actors: 0 were accepted and failed every row or the pool."""
    from ray_pipelines.jobs.augment import AugmentConfig
    from ray_pipelines.jobs.features import FeaturesConfig
    from ray_pipelines.jobs.score import ScoreConfig
    from ray_pipelines.jobs.teacher import TeacherConfig

    base = {"input": "in", "output": "out"}
    for model, key, value in (
        (AugmentConfig, "duration", float("inf")),
        (TeacherConfig, "duration", float("inf")),
        (FeaturesConfig, "snippet_seconds", float("inf")),
        (FeaturesConfig, "mean", float("nan")),
        (ScoreConfig, "offset", float("inf")),
        (AugmentConfig, "lease_timeout", float("inf")),
    ):
        with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
            validate_config(model, {**base, key: value})
    # the sections' floats too: allow_inf_nan does not reach the section models
    for model, section in (
        (ScoreConfig, {"signal": {"frame_seconds": float("inf")}}),
        (AugmentConfig, {"waveform_pool": {"gain": {"max_db": float("inf")}}}),
    ):
        with pytest.raises(
            ConfigError, match=r"(signal\.frame_seconds|waveform_pool\.gain\.max_db): should be a finite"
        ):
            validate_config(model, {**base, **section})
    for actors in (0, -2):
        with pytest.raises(ConfigError, match="actors: Input should be greater than or equal to 1"):
            validate_config(AugmentConfig, {**base, "actors": actors})
    assert validate_config(AugmentConfig, {**base, "actors": 2}).actors == 2


def test_the_configs_command_and_a_jobs_help_name_only_what_fits(tmp_path, capsys):
    """score --help offered score-filter (the filter tool's section, not a score config); `configs <folder>`
    or a path that is not there raised a traceback."""
    from ray_pipelines.cli import configs_command, job_parser
    from ray_pipelines.jobs.score import ScoreConfig

    score_help = job_parser("score", ScoreConfig).format_help()
    assert "score-filter" not in score_help and "score-mae" in score_help
    for spec in (str(tmp_path), str(tmp_path / "nope" / "x.yaml")):
        assert configs_command([spec]) == 2
        assert capsys.readouterr().err.startswith("ray-pipelines configs: ")


def test_credentials_anywhere_in_a_config_are_refused_not_written_to_the_output():
    """Only storage_options and the input/output URLs were checked: a model path with user:password@ and a
    factory's hf_token were printed by --print-config and written into _job.json and manifest.json."""
    from ray_pipelines.jobs.encode import EncodeConfig
    from ray_pipelines.jobs.score import ScoreConfig
    from ray_pipelines.jobs.teacher import TeacherConfig

    base = {"input": "in", "output": "out"}
    factory = {"kind": "factory", "factory": "models.py:build"}
    for model, config, where in (
        (EncodeConfig, {"model": {"kind": "torchscript", "path": "https://user:hunter2@host/m.ts"}}, "model.path"),
        (
            EncodeConfig,
            {"model": {**factory, "factory_kwargs": {"hf_token": "hf_SECRET"}}},
            "model.factory_kwargs.hf_token",
        ),
        (
            ScoreConfig,
            {"scorers": ["reconstruction"], "model": {**factory, "kwargs": {"api_key": "x"}}},
            "model.kwargs.api_key",
        ),
        (
            TeacherConfig,
            {"teachers": [{"kind": "torchscript", "name": "fx", "sample_rate": 16000, "path": "https://tok:x@h/m.ts"}]},
            "teachers.0.path",
        ),
    ):
        with pytest.raises(ConfigError, match=rf"{re.escape(where)}: a credential .* would be written to the output's"):
            validate_config(model, {**base, **config})
    # a model's settings named like secrets without holding one: counts and tools, switches, special tokens
    kwargs = {"max_tokens": 5, "tokenizer": "bpe", "n_tokens": 3, "use_auth_token": True, "token": False}
    kwargs |= {"pad_token": "<pad>", "eos_token": "</s>", "key": "mel"}
    score = validate_config(
        ScoreConfig, {**base, "scorers": ["reconstruction"], "model": {**factory, "kwargs": kwargs}}
    )
    assert score.model.kwargs == kwargs


def test_a_list_set_on_the_command_line_with_numbers_is_refused_not_taken_as_one_pattern():
    """--set 'input=[2023, 2024]' became the one glob pattern "[2023, 2024]", which matched nothing (or files
    named 2, 0, 3 or 4) long after the config was accepted."""
    with pytest.raises(ConfigError, match=r"input: should be a string \(got \[2023, 2024\]\)"):
        load_config(AugmentConfig, None, ["input=[2023, 2024]", "output=out"])
    assert load_config(AugmentConfig, None, ["input=['2023', '2024']", "output=out"]).input == ["2023", "2024"]
    assert load_config(AugmentConfig, None, ["input=0123", "output=out"]).input == "0123"  # a scalar: its text


def test_a_dotted_set_into_a_mapping_the_config_leaves_out_changes_the_default_mapping():
    """The README's `--set splits.train=0.6 --set splits.test=0.3` was refused ("they sum to 0.9") on a
    packaged config without a splits key, and accepted on one that spells the default out."""
    from ray_pipelines.jobs.features import FeaturesConfig

    overrides = ["input=in", "output=out", "splits.train=0.6", "splits.test=0.3"]
    for packaged in ("features-tar", "features"):
        assert load_config(FeaturesConfig, packaged, overrides).splits == {"train": 0.6, "validate": 0.1, "test": 0.3}
    whole = load_config(FeaturesConfig, "features-tar", ["input=in", "output=out", "splits={train: 0.8, test: 0.2}"])
    assert whole.splits == {"train": 0.8, "test": 0.2}  # a whole mapping replaces it


def test_a_misspelt_s3_storage_option_is_refused_with_the_key_it_is_close_to():
    """s3fs takes any keyword: `endpoint: http://minio:9000` was accepted and ignored, and the run talked to
    AWS with the environment's credentials instead of the MinIO it was meant for."""
    s3 = {"input": "s3://bucket/in", "output": "s3://bucket/out"}
    for options, said in (
        ({"endpoint": "http://127.0.0.1:9000"}, "endpoint (did you mean endpoint_url?)"),
        ({"regoin": "eu-west-1"}, "regoin (did you mean region?)"),
        ({"requester_pay": True}, "requester_pays"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            validate_config(AugmentConfig, {**s3, "storage_options": options})
    fine = {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1", "profile": "minio", "anon": False}
    assert validate_config(AugmentConfig, {**s3, "storage_options": fine}).storage_options == fine
    local = validate_config(AugmentConfig, {"input": "in", "output": "out", "storage_options": {"endpoint": "x"}})
    assert local.storage_options == {"endpoint": "x"}  # only S3's options are known here


@pytest.mark.parametrize(
    "path",
    ["data//mels", "memory//x", "C:data", "file:data/in", "local:out", "data:2024/out", "tar:x", "s3/bucket/out"],
)
def test_local_paths_that_only_look_like_mistyped_urls_are_accepted(path):
    """Only an object store's name before "//" or a bare ":" is taken for a mistyped URL: a doubled slash in a
    local path (``data//mels``: fsspec knows a "data" protocol), a folder named ``data:2024``, a drive letter
    stay paths."""
    assert url_problem(path, written=True) == ""


def test_a_url_or_a_drive_is_not_taken_for_a_yaml_slip():
    from ray_pipelines.config import _yaml_slip

    for value in ("s3://models/mae.ts", "http://minio:9000", "C:/models/x.ts"):
        assert _yaml_slip({"type": "model_type", "input": value}) == ""
    assert (
        _yaml_slip({"type": "model_type", "input": "kind:pesto"})
        == "; YAML reads 'kind:pesto' as one string: write 'kind: pesto'"
    )


@pytest.mark.parametrize(
    ("teachers", "said"),
    [
        # was "teachers.0: Unable to extract tag using discriminator 'kind'" (pydantic's words, no key, no kinds)
        (
            "[{name: fx, path: m.ts, sample_rate: 44100}]",
            "teachers.0.kind: required key is missing (one of pesto, torchcrepe, loudness, torchscript, factory)",
        ),
        (
            "[{kind:loudness}]",
            "teachers.0.kind: required key is missing (one of pesto, torchcrepe, loudness, torchscript, factory); "
            "YAML reads 'kind:loudness' as one key: write 'kind: loudness'",
        ),
        # the block style's slip (`- kind:loudness`): YAML reads a string, "not a valid dictionary" alone before
        (
            "['kind:loudness']",
            "teachers.0: Input should be a valid dictionary or object to extract fields from (got 'kind:loudness'); "
            "YAML reads 'kind:loudness' as one string: write 'kind: loudness'",
        ),
        (
            "[{kind: pesot}]",
            "teachers.0.kind: unknown kind 'pesot'; did you mean pesto? (one of pesto, torchcrepe, loudness, "
            "torchscript, factory)",
        ),
    ],
)
def test_a_teacher_without_a_known_kind_is_told_which_kinds_there_are(teachers, said):
    from ray_pipelines.jobs.teacher import TeacherConfig

    with pytest.raises(ConfigError) as error:
        validate_config(TeacherConfig, {"input": "a", "output": "b", "teachers": yaml.safe_load(teachers)})
    assert str(error.value) == f"invalid config:\n  {said}"
