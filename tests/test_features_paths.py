"""Paths with `.` and `..` parts in the features library (no Ray): a shard made with `tar -C lib .` names its
members `./bass/x.flac`, `find . -name '*.flac' > songs.txt` writes `./bass/x.flac` lines. With the default
skip_dirs (`.*`) every such file was "in skip_dirs" (the part `.` matched) and the job exited 1."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.features.library import in_skipped_dir, label_of, scan_library
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob
from ray_pipelines.sources import SourceError, list_inputs
from tests.audio_helpers import encoded_bytes, tone
from tests.conftest import Lines

DEFAULT_SKIP_DIRS = ["__MACOSX", ".*"]
SPLITS = {"train": 0.7, "validate": 0.1, "test": 0.2}


def make_library(root, labels=("bass", "tabla"), songs=3) -> list[str]:
    """Tiny real FLACs, ``songs`` per label; their paths relative to ``root``."""
    paths = []
    for label in labels:
        for i in range(songs):
            path = root / label / f"s{i}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded_bytes(tone(0.05, seed=i), "flac"))
            paths.append(f"{label}/s{i}.flac")
    return paths


def job(tmp_path, spec, **config) -> FeaturesJob:
    base = {"input": str(spec), "output": str(tmp_path / "out"), "min_per_label": 3, "splits": SPLITS}
    return FeaturesJob(validate_config(FeaturesConfig, {**base, **config}))


def test_dot_and_dot_dot_are_path_syntax_not_folder_names():
    for path in ("./bass/x.flac", "shard0.tar/./bass/x.flac", "./shard0.tar/./bass/x.flac", "../lib3/bass/x.flac"):
        assert not in_skipped_dir(path, DEFAULT_SKIP_DIRS), path
    assert in_skipped_dir("./bass/.cache/x.flac", DEFAULT_SKIP_DIRS)  # a hidden folder is still one
    assert in_skipped_dir("../lib3/__MACOSX/bass/x.flac", DEFAULT_SKIP_DIRS)
    assert label_of("./bass/x.flac") == "bass" and label_of("a/./b/x.flac") == "a"
    assert label_of("a/../b/x.flac") == "b"  # read resolved, as the listing reads the line
    assert label_of("../lib3/bass/x.flac") is None and label_of("bass/../../x/y.flac") is None  # above the root
    assert label_of("./x.flac") is None and label_of("a/../x.flac") is None  # at the root


def test_a_shard_made_with_tar_dash_c_dot_is_labelled_by_its_member_folders(tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    paths = make_library(tmp_path / "lib")
    hidden = tmp_path / "lib" / "bass" / ".cache" / "old.flac"
    hidden.parent.mkdir()
    hidden.write_bytes(encoded_bytes(tone(0.05), "flac"))
    subprocess.run(["tar", "cf", str(tmp_path / "shard0.tar"), "-C", str(tmp_path / "lib"), "."], check=True)
    items = list_inputs(str(tmp_path / "shard0.tar"), ["flac"], include_hidden=True)
    assert "shard0.tar/./bass/s0.flac" in {i.key for i in items}  # the engine's keys are the member names
    result = scan_library(items, skip_dirs=DEFAULT_SKIP_DIRS, min_per_label=3)
    assert result.songs_per_label == {"bass": 3, "tabla": 3} and result.skipped == 1  # only .cache/old.flac
    assert result.unlabelled == [] and result.above_root == []
    planned = job(tmp_path, tmp_path / "shard0.tar").list_inputs()  # the job's own listing and plan
    assert sorted((i.key, i.extra["label"]) for i in planned) == sorted(
        (f"shard0.tar/./{path}", 0 if path.startswith("bass/") else 1) for path in paths
    )


def test_a_list_file_of_find_dot_lines_is_labelled(tmp_path):
    paths = make_library(tmp_path / "lib")
    (tmp_path / "lib" / "songs.txt").write_text("".join(f"./{path}\n" for path in paths))
    planned = job(tmp_path, tmp_path / "lib" / "songs.txt").list_inputs()
    assert {i.key: i.extra["label"] for i in planned} == {f"./{p}": 0 if p.startswith("bass/") else 1 for p in paths}


def test_list_lines_above_the_list_files_folder_are_left_out_saying_why(tmp_path):
    paths = make_library(tmp_path / "lib")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "songs.txt").write_text("".join(f"../lib/{path}\n" for path in paths))
    with pytest.raises(SourceError) as error:
        job(tmp_path, tmp_path / "lists" / "songs.txt").list_inputs()
    assert str(error.value) == (
        "none of the 6 listed files is kept: 6 above the folder their paths are read from: a list file's lines "
        "are read from the list file's folder, whose first folders are the labels, and a line going above it "
        "(../) has none; put the list file in the folder that holds the label folders (e.g. ../lib/bass/s0.flac); "
        "set allow_empty: true if an empty output is expected"
    )

    # Beside labelled lines and a loose file: left out, counted as unlabelled, and the warnings tell them apart.
    (tmp_path / "lib" / "x.flac").write_bytes(encoded_bytes(tone(0.05), "flac"))
    (tmp_path / "other" / "bass").mkdir(parents=True)
    (tmp_path / "other" / "bass" / "a.flac").write_bytes(encoded_bytes(tone(0.05), "flac"))
    lines = paths + ["x.flac", "../other/bass/a.flac"]
    (tmp_path / "lib" / "songs.txt").write_text("".join(f"{line}\n" for line in lines))
    logger, said = logging.getLogger("ray_pipelines.jobs.features"), Lines()
    logger.addHandler(said)
    try:
        features = job(tmp_path, tmp_path / "lib" / "songs.txt", output=str(tmp_path / "out2"))
        planned = features.list_inputs()
    finally:
        logger.removeHandler(said)
    assert sorted(i.key for i in planned) == paths
    scan = features.plan.scan
    assert (scan.unlabelled, scan.above_root) == (["../other/bass/a.flac", "x.flac"], ["../other/bass/a.flac"])
    assert [line for line in said.lines if "left out" in line] == [
        "features: 1 files directly under the root have no label folder and are left out",
        "features: 1 files are left out: above the folder their paths are read from: a list file's lines are read "
        "from the list file's folder, whose first folders are the labels, and a line going above it (../) has "
        "none; put the list file in the folder that holds the label folders (e.g. ../other/bass/a.flac)",
    ]
