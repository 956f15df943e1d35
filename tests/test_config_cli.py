"""Config you can discover: --print-config, --schema, --help, did-you-mean, --version, configs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from ray_pipelines import __version__
from ray_pipelines.cli import JOBS, main
from ray_pipelines.config import ConfigError, load_config, packaged_config_names
from tests.audio_helpers import REPO

# Every packaged example config of a job (score-filter.yaml is a filter section, not a job config).
JOB_CONFIGS = [name for name in packaged_config_names() if name.split("-")[0] in JOBS and name != "score-filter"]


def model_of(job: str):
    return importlib.import_module(JOBS[job]).JOB.config_model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", JOB_CONFIGS)
def test_print_config_runs_as_a_config_with_the_same_fingerprint(name, tmp_path, capsys):
    job = name.split("-")[0]
    code, printed, err = run_cli(capsys, job, "--config", name, "--set", "seed=7", "--print-config")
    assert code == 0, err
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    original = load_config(model_of(job), name, ["seed=7"])
    again = load_config(model_of(job), saved)
    assert again.fingerprint() == original.fingerprint()
    assert again.model_dump() == original.model_dump()
    assert "seed: 7" in printed.splitlines()
    # Every key is there, defaults included, each under its description when it has one; a default the
    # config refuses when given explicitly (score: model without the reconstruction scorer) as a comment.
    data = yaml.safe_load(printed)
    commented = set(re.findall(r"left unset: this config refuses (\w+) when given explicitly", printed))
    assert set(data) | commented == set(model_of(job).model_fields)
    assert commented <= ({"model"} if job == "score" else set())
    description = model_of(job).model_fields["seed"].description
    assert f"# {description}" in printed


@pytest.mark.parametrize("job", sorted(JOBS))
def test_schema_is_a_valid_json_schema_that_accepts_the_printed_configs(job, capsys):
    code, out, _ = run_cli(capsys, job, "--schema")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert set(schema["required"]) >= {"input", "output"}
    for name in (n for n in JOB_CONFIGS if n.split("-")[0] == job):
        code, out, _ = run_cli(capsys, job, "--config", name, "--print-config")
        printed = yaml.safe_load(out)
        assert not list(validator.iter_errors(printed)), name
    # And it rejects what validation rejects: an unknown key, a wrong type.
    assert list(validator.iter_errors({"input": "a", "output": "b", "no_such_key": 1}))
    assert list(validator.iter_errors({"input": "a", "output": "b", "seed": "zero"}))


def test_unknown_keys_get_a_did_you_mean_at_any_depth():
    with pytest.raises(ConfigError) as error:
        load_config(
            model_of("teacher"),
            "teacher-synth",
            ["batchsize=4", "synth.num_sample=3", "teachers=[{kind: torchcrepe, capcity: tiny}]", "zzz=1"],
        )
    message = str(error.value)
    assert "  batchsize: unknown key; did you mean batch_size?" in message
    assert "  synth.num_sample: unknown key; did you mean num_samples?" in message
    assert "  teachers.0.torchcrepe.capcity: unknown key; did you mean capacity?" in message
    assert "  zzz: unknown key\n" in message + "\n"
    # A section of score columns' own names (the score job's filter) leads to the rule each holds.
    with pytest.raises(ConfigError) as error:
        load_config(model_of("score"), "score", ["filter.speech_fraction.bound=[0.1, null]", "filter.snr_db.kk=2"])
    message = str(error.value)
    assert "  filter.speech_fraction.bound: unknown key; did you mean bounds?" in message
    assert "  filter.snr_db.kk: unknown key; did you mean k?" in message
    # A factory's arguments, named as another job names them (was: "did you mean factory?")
    with pytest.raises(ConfigError) as error:
        load_config(model_of("score"), "score-pt", ["model={kind: factory, factory: m:f, factory_kwargs: {}}"])
    assert "  model.factory_kwargs: unknown key; did you mean kwargs?" in str(error.value)
    # A section's key given at the top (the filter tool's score-filter as a score config): the section's
    # own (was: "did you mean shard_splits?")
    with pytest.raises(ConfigError) as error:
        load_config(model_of("score"), "score-filter", ["input=a", "output=b"])
    assert "  train_split: unknown key; did you mean filter.train_split?" in str(error.value)
    # ...but not into a list's entries, which `--set teachers.checkpoint=` would not reach
    with pytest.raises(ConfigError) as error:
        load_config(model_of("teacher"), "teacher-synth", ["checkpoint=w.pt"])
    assert "  checkpoint: unknown key\n" in str(error.value) + "\n"


def test_set_reaches_into_a_list_by_index():
    """The GPU teacher template's model path could not be set from the command line ("teachers is not a
    mapping"): a number after a list is its entry."""
    config = load_config(model_of("teacher"), "teacher-effect-gpu", ["teachers.0.path=/models/fx-v2.ts"])
    assert config.teachers[0].path == "/models/fx-v2.ts" and config.teachers[0].name == "fx"
    with pytest.raises(
        ConfigError, match=r"--set teachers.1.path: teachers is a list of 1: give an entry's index \(0 to 0\)"
    ):
        load_config(model_of("teacher"), "teacher-effect-gpu", ["teachers.1.path=/x.ts"])
    with pytest.raises(ConfigError, match=r"--set teachers.fx.path: teachers is a list of 1"):
        load_config(model_of("teacher"), "teacher-effect-gpu", ["teachers.fx.path=/x.ts"])


def test_cli_did_you_mean_exits_2_before_starting_anything(capsys, tmp_path, monkeypatch):
    code, out, err = run_cli(capsys, "augment", "--config", "augment", "--set", "num_version=3")
    assert code == 2 and out == ""
    assert "num_version: unknown key; did you mean num_versions?" in err
    # "no config file 'nightly.yaml' here": on a cluster "here" is the head's folder, not the submitting shell's;
    # a path with a folder said "cannot read config file configs/nightly.yaml: No such file or directory"
    code, _, err = run_cli(capsys, "augment", "--config", "nightly.yaml")
    assert code == 2 and f"no config file 'nightly.yaml' in {os.getcwd()} and no packaged config" in err
    code, _, err = run_cli(capsys, "augment", "--config", "configs/nightly.yaml")
    assert code == 2 and err.strip().endswith(f"no config file 'configs/nightly.yaml' in {os.getcwd()}")
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)  # where a submitted job's driver runs
    code, _, err = run_cli(capsys, "augment", "--config", "configs/nightly.yaml")
    assert code == 2 and err.strip().endswith(f"in {copy}, Ray's copy of the job's --working-dir")
    code, _, err = run_cli(capsys, "augmnet")
    assert code == 2 and "did you mean augment?" in err


def test_help_lists_every_key_with_its_type_default_and_description(capsys):
    code, out, _ = run_cli(capsys, "augment", "--help")
    assert code == 0
    model = model_of("augment")
    for name in model.model_fields:
        assert f"\n  {name}  (" in out or f"\n  {name}:  (section)" in out, name
    assert "  num_versions  (int; default 5)\n      Versions (independent crops) per clip." in out
    assert "  input  (str or list of str; required)" in out
    assert "  waveform_pool.gain.min_db  (float; default -6.0)" in out
    assert '  compression  (none|snappy|zstd|lz4|gzip; default "lz4")' in out
    assert "packaged example configs (--config NAME):\n  augment " in out
    assert "--print-config" in out and "--schema" in out and "--verbose" in out


def test_help_lists_each_kind_of_a_list_of_models(capsys):
    _, out, _ = run_cli(capsys, "teacher", "--help")
    assert "  teachers[] with kind: torchcrepe" in out
    assert '  teachers[].capacity  (tiny|full; default "tiny")' in out


def test_help_lists_a_score_filter_rules_keys_and_the_defaults_a_section_gives(capsys):
    """score --help left out every key of a per-score filter rule, said `normalize: (section)` of a section
    that is null unless given, and augment --help called the built-in masks' max_width required (24, 26)."""
    code, out, _ = run_cli(capsys, "score", "--help")
    assert code == 0
    assert "\n  filter.<score>:  (section or null)\n      A rule per score, keyed by the score column's name" in out
    for key in ("mode", "k", "ddof", "lower_quantile", "upper_quantile", "bounds", "hard_low", "hard_high", "side"):
        assert f"\n  filter.<score>.{key}  (" in out, key
    assert '  filter.<score>.mode  (none|median|mean|percentile|hardcode; default "median")' in out
    assert "  filter.<score>.bounds  (list of (float or null) or null; default null)" in out
    assert "\n  normalize:  (section or null; default null)\n" in out
    _, out, _ = run_cli(capsys, "augment", "--help")
    assert "  spectrogram_pool.frequency_mask.max_width  (int; default 24, required when " in out
    assert "  spectrogram_pool.time_mask.max_width  (int; default 26, required when " in out
    assert "  waveform_pool.gain:  (section)\n  waveform_pool.gain.min_db  (float; default -6.0)" in out


def test_each_jobs_compression_help_fits_what_it_writes(capsys):
    """The teacher and score jobs' compression help spoke of log-mels shrinking to a third."""
    described = {}
    for job in ("augment", "teacher", "score"):
        _, out, _ = run_cli(capsys, job, "--help")
        described[job] = out.split("\n  compression  ", 1)[1].split("\n  direct_io", 1)[0]
    assert "log-mels shrink to about a third" in described["augment"]
    teacher = " ".join(described["teacher"].split())  # unwrapped
    assert teacher.startswith('(none|snappy|zstd|lz4|gzip; default "none")') and "2.2x the bytes" in teacher
    assert "log-mels" not in teacher
    assert "scalar scores per item" in described["score"] and "log-mels" not in described["score"]
    assert model_of("score").model_fields["compression"].default == "lz4"  # the default, as before


def test_configs_help_its_extra_arguments_and_the_filter_tools_config(capsys):
    """`configs --help` exited 2 (no config file '--help'), `configs NAME extra` ignored the extra, and the
    listing said to run score-filter as a job's config (it is the filter tool's)."""
    for flag in ("--help", "-h"):
        code, out, err = run_cli(capsys, "configs", flag)
        assert (code, err) == (0, "") and out.startswith("usage: ray-pipelines configs [NAME]")
        assert "configs NAME   print one" in out
    code, out, err = run_cli(capsys, "configs", "augment", "extra")
    assert code == 2 and out == ""
    assert err.startswith("ray-pipelines configs: takes one NAME, not also 'extra'\nusage: ")
    code, out, _ = run_cli(capsys, "configs")
    assert code == 0
    assert "\n(score-filter is the filter tool's config: ray-pipelines filter SCORES --config score-filter)\n" in out
    # ...and a job given it says whose it is (was: one "unknown key" error per filter key)
    for spec in ("score-filter", "score-filter.yaml", "jobs/configs/score-filter.yaml"):
        code, out, err = run_cli(capsys, "score", "--config", spec, "--set", "input=a", "--set", "output=b")
        assert (code, out) == (2, "")
        assert err == (
            f"ray-pipelines score: {spec} is the filter tool's packaged config, not a job's: "
            f"ray-pipelines filter SCORES --config {spec}\n"
        )


def test_a_pipe_whose_reader_left_ends_quietly_and_a_job_keeps_its_exit_code(tmp_path):
    """``ray-pipelines configs | head -1`` printed BrokenPipeError's traceback; a complete job whose
    stdout's reader had gone (a log shipper, ``| true``) exited 1, the summary's traceback."""

    def stdout_closed(*argv: str) -> tuple[int, str]:
        cli = [sys.executable, "-m", "ray_pipelines.cli", *argv]
        process = subprocess.Popen(cli, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        process.stdout.close()  # gone before the first line (the interpreter takes far longer to start)
        err = process.stderr.read()
        return process.wait(timeout=300), err

    assert stdout_closed("configs") == (141, "")  # 128 + SIGPIPE, as a shell's writer
    (tmp_path / "in").mkdir()
    run = ["--no-progress", "--set", f"input={tmp_path / 'in'}", "--set", f"output={tmp_path / 'out'}"]
    code, err = stdout_closed("augment", *run, "--set", "allow_empty=true")  # complete, Ray never started
    assert (code, err) == (0, "") and (tmp_path / "out" / "_SUCCESS").exists()


def test_version_and_the_packaged_configs(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith(f"ray-pipelines {__version__} (python ") and "ray 2.60.0" in out
    code, out, _ = run_cli(capsys, "configs")
    assert code == 0
    for name in packaged_config_names():
        assert f"\n  {name} " in out
    # Each config's first sentence, whole: the first comment line alone ended "Credentials come from the".
    assert re.search(r"^  augment-s3 +The augment job from and to object storage\.$", out, re.M), out
    assert re.search(r"^  score-shards +The score job on another job's committed Parquet output, e\.g\. ", out, re.M)
    code, out, _ = run_cli(capsys, "configs", "augment")
    assert code == 0 and yaml.safe_load(out)["num_versions"] == 5
    code, _, err = run_cli(capsys, "configs", "no-such-config")
    assert code == 2 and "packaged configs:" in err


def test_the_demo_takes_no_arguments_and_says_so_without_running(capsys, tmp_path, monkeypatch):
    """`python -m jobs.demo --help` ran the whole demo, writing demo-audio/ and demo-output/ where it stood."""
    from ray_pipelines.jobs.demo import main as demo

    monkeypatch.chdir(tmp_path)
    assert demo(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: python -m jobs.demo")
    assert demo(["--set", "num_versions=2"]) == 2 and "usage: python -m jobs.demo" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
