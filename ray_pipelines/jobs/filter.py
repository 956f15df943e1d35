"""``ray-pipelines filter SCORES --config FILE``: re-run the score filters from stored scores.

SCORES is a score job's output root (its Parquet scores and errors.jsonl are
read) or a scores CSV (this job's scores.csv, or an evaluation script's with
filename, split and score columns such as reconstruction_loss,
signal_energy). A CSV at the root of a score output is that output's: its
errors.jsonl and, without a config, its rules apply, as for the root. Nothing
is recomputed and no Ray is started. The config is a score config (its
``filter`` section is used) or a file holding just that section; without one,
a score output's filters are the ones its job ran with (its manifest's
config), another CSV's none. ``--set`` keys are relative to the section
(``--set dnsmos_ovrl.mode=percentile``).

Writes filter.json, kept.txt, ignored.txt, decisions.csv, groups.csv,
histograms/*.png and scatter.png (plus the summaries) into ``--output``, by
default next to the scores (a score output root, or the CSV's folder, unless
that holds another job's output, or a live run of the score job holds its
lease: its commit would write over them), replacing what an earlier filter
run wrote there (also removing its summaries and histograms of splits and
scores these scores do not have); filter.json records the settings used.
Written beside the scores, they last until the job's next run. Exit codes:
0 done, 2 bad config (also a rule naming a score the scores do not have), 1
unreadable scores, an output the store refuses (also a missing bucket: none
is made).
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

from ray_pipelines.config import ConfigError, apply_overrides, parse_overrides, read_config_file, validate_config
from ray_pipelines.engine.lease import Holder, lease_store
from ray_pipelines.engine.manifest import JOB_FILE, MANIFEST_FILE
from ray_pipelines.scoring.report import (
    FilterSettings,
    filter_warnings,
    format_filter_report,
    write_filter_outputs,
    write_summaries,
)
from ray_pipelines.scoring.table import ScoreTable, read_errors
from ray_pipelines.storage import Storage, missing_bucket, split_protocol, storage_errors, url_credentials, url_problem


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-pipelines filter",
        description="Re-run the score filters from stored scores (nothing recomputed).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scores", help="A score job output root, or a scores CSV.")
    p.add_argument(
        "--config",
        "-c",
        help="A score config (its 'filter' section), a filter section file, or a packaged config's name.",
    )
    p.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a filter key (dotted, relative to the filter section); repeatable.",
    )
    p.add_argument("--output", "-o", help="Where to write (default: beside the scores).")
    p.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for SCORES and --output (e.g. endpoint_url=http://...); repeatable.",
    )
    return p


EXIT_CODES = """exit codes:
  0  done: the filter outputs written
  2  a bad config or --set (a rule naming a score the scores do not have, a train_split they
     do not have), a URL holding credentials, an --output (or a CSV's folder, without one)
     holding another job's output, the output's lease held by a live run of the score job
     (writing beside its scores)
  1  the scores unreadable (not a committed score output, a damaged CSV), the store refusing
     reads or writes, an --output bucket that does not exist (none is made)"""


# Keys of a job's config that a filter section never has (a section's keys are its settings and score names).
JOB_KEYS = frozenset({"input", "output", "scorers", "source", "sample_rate", "duration", "model", "storage_options"})


def load_filter_settings(
    path: str | None, overrides: list[str], base: dict[str, Any] | None = None, scores: list[str] | None = None
) -> FilterSettings:
    """The filter section of ``path`` (a score config, a bare section, or a packaged config's name), else
    ``base`` (the section a score job ran with), with ``--set`` overrides. With ``scores`` known, a rule
    for a score they do not have is refused first (``--set speech_fractio.bounds=...``: a mistyped name,
    not a rule without a mode)."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        loaded = read_config_file(path)
        if "filter" not in loaded and set(loaded) & JOB_KEYS:
            raise ConfigError(
                f"config file {path} is a job's config with no filter section: give a score config that has "
                "one, or a filter section of its own (such as the packaged score-filter)"
            )
        data = loaded.get("filter", {}) if "filter" in loaded else loaded
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: 'filter' must be a mapping")
    data = apply_overrides(data, overrides)
    FilterSettings.check_setting_names(data, section="")  # `trainsplit=val`: a mistyped setting, not a rule
    if scores is not None:
        FilterSettings.check_section_names(data, scores, section="")
    return validate_config(FilterSettings, data)


def without_unused_bounds(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """A score output's recorded filter section, the bounds of rules that are not ``hardcode`` left out: the
    outputs of runs before 2026-12-07 recorded every rule with the default bounds then, [1.5, 7.0], which a
    ``--set <score>.mode=hardcode`` would have taken for that score without a word (now it needs bounds)."""
    if not section:
        return section
    return {
        name: {k: v for k, v in rule.items() if k != "bounds"}
        if isinstance(rule, dict) and "mode" in rule and rule["mode"] != "hardcode"
        else rule
        for name, rule in section.items()
    }


def read_score_manifest(root: str, options: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a committed score output; another job's output is refused by name."""
    storage = Storage(root, options)
    if not storage.exists("manifest.json"):
        # A run that claimed it (_job.json) and stopped before its first commit: its job can finish it.
        job = storage.read_json(JOB_FILE).get("job") if storage.exists(JOB_FILE) else None
        raise FileNotFoundError(
            f"{root} has no manifest.json (not a committed score output"
            + (f"; a run of the {job} job started it and never committed: run it again to finish it)" if job else ")")
        )
    manifest = storage.read_json("manifest.json")
    # the readers' check_job says the same for their jobs; importing it here would import torch (1.4 s)
    if manifest.get("job", "score") != "score":
        raise ValueError(f"{root} is the {manifest['job']} job's output, not a score job's: it has no scores to filter")
    return manifest


def other_output(output: str, own: str | None, options: dict[str, Any], given: bool = True) -> str | None:
    """Why ``output`` must not be written: it holds a job's output other than ``own``, the score output the
    scores are (None for a CSV of no score output's): its kept.txt, the list other jobs take as their
    keep_list, would be replaced by these scores'. ``given``: ``--output`` names it (else it is the CSV's
    folder, where the outputs go without one)."""
    storage = Storage(output, options)
    if (own is not None and Storage(own, options).root == storage.root) or not storage.exists(JOB_FILE):
        return None
    try:
        job = storage.read_json(JOB_FILE).get("job", "another")
    except Exception:  # unreadable: still another output's
        job = "another"
    if given:
        return f"--output {output} holds the {job} job's output: give the filter outputs a folder of their own"
    return (
        f"{output}, the scores CSV's folder (where the filter outputs go without --output), holds the {job} "
        "job's output: give the filter outputs a folder of their own (--output)"
    )


def held_by_a_live_run(output: str, options: dict[str, Any]) -> str | None:
    """Why ``output`` must not be written: a live run of its job holds its lease (``_lease.json``), and that
    run's commit rewrites kept.txt, filter.json and the rest there with its own rules. None when no lease
    is there, or one a run would take over (stale, unreadable)."""
    storage = Storage(output, options)
    try:
        current = lease_store(storage).read()  # read as the job's own lease reads it (one request)
    except NotADirectoryError:
        return None
    holder = Holder.parse(current[0]) if current else None
    now = time.time()
    if holder is None or holder.stale_because(now):
        return None
    return (
        f"{storage.root} is in use by {holder.describe(now)}, whose commit would write its own filter outputs "
        "over these: give the filter outputs a folder of their own (--output), or wait for that run to finish "
        f"(a run that is gone holds it until {holder.timeout_s:g} s after its last heartbeat)"
    )


# The readers' words for an output whose last run did not finish (readers/parquet.py imports torch).
INCOMPLETE = (
    "{root} is incomplete: its last run left {to_retry} inputs to retry (no _SUCCESS), whose scores are not "
    "there: rerun the job to finish it; filtering the scores committed"
)


def write_failure(error: Exception, where: str) -> str:
    """The job's words for a store refusing the writes (``write failed: Access Denied: s3://out/s1``), else ""."""
    if not isinstance(error, OSError):
        return ""
    from ray_pipelines.engine.control import store_failure  # imports Ray (0.7 s): only once a write failed

    return store_failure(error, where)


def is_csv(scores: str) -> bool:
    return split_protocol(scores)[1].lower().endswith(".csv")


def csv_folder(scores: str) -> str:
    """The folder a scores CSV is in (a local one absolute)."""
    protocol, path = split_protocol(scores)
    if protocol == "file":
        return str(Path(path).resolve().parent)
    return f"{protocol}://{posixpath.dirname(path)}"


def score_output_of(scores: str, options: dict[str, Any]) -> str | None:
    """The score output whose scores ``scores`` are: a score output root itself, or the root a scores CSV
    sits at (its scores.csv); None for a CSV of no score output's. Filtering OUT/scores.csv as a bare CSV
    replaced the output's kept.txt with every key (no rules) and left its failed inputs out of both lists."""
    if not is_csv(scores):
        return scores
    if posixpath.basename(split_protocol(scores)[1]) != "scores.csv":  # an evaluation script's CSV beside it
        return None
    folder = Storage(csv_folder(scores), options)
    for name in (MANIFEST_FILE, JOB_FILE):  # a run that never committed has only its claim, _job.json
        if folder.exists(name):
            return csv_folder(scores) if folder.read_json(name).get("job", "score") == "score" else None
    return None


def _reason(error: Exception) -> str:
    """What a failure says: a ValueError's own words (they name the file and what is wrong in it); a storage
    error or a missing key with its kind (``FileNotFoundError: ...``), which its message alone may not say."""
    return str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = parse_overrides(args.storage_options)
        for url, written in ((args.scores, False), (args.output or args.scores, True)):
            if hidden := url_credentials(url):  # filter.json records where the scores came from, as a job's manifest
                raise ConfigError(f"{hidden} holds credentials (user:password@); set them in the environment")
            if problem := url_problem(url, written):  # (the output is beside the scores unless --output names one)
                raise ConfigError(f"{url}: {problem}" + ("" if args.output else "; give --output"))
    except ConfigError as e:
        print(f"ray-pipelines filter: {e}", file=sys.stderr)
        return 2
    try:
        score_output = score_output_of(args.scores, options)
    except (*storage_errors(), ValueError) as e:
        print(f"ray-pipelines filter: {_reason(e)}", file=sys.stderr)
        return 1
    # A score output without --config is filtered as its job filtered it, --set changing rules: starting
    # from no rules rewrote its kept.txt (what other jobs take as their keep_list) with nearly every key.
    job_rules = args.config is None and score_output is not None
    try:
        settings = None if job_rules else load_filter_settings(args.config, args.overrides)
    except ConfigError as e:
        print(f"ray-pipelines filter: {e}", file=sys.stderr)
        return 2
    warnings: list[str] = []
    try:
        table = ScoreTable.from_csv(args.scores, options) if is_csv(args.scores) else None
        errors: list[tuple[str, int, str]] | dict[str, str] = {}
        if score_output is not None:  # its failed inputs are ignored keys, whichever file its scores come from
            manifest = read_score_manifest(score_output, options)
            table = table if table is not None else ScoreTable.from_output(score_output, options, manifest)
            errors = read_errors(score_output, options)
            if manifest.get("complete") is False:
                to_retry = manifest.get("counts", {}).get("to_retry", 0)
                warnings.append(INCOMPLETE.format(root=score_output, to_retry=to_retry))
        default_output = score_output or csv_folder(args.scores)
    except (*storage_errors(), ValueError, KeyError) as e:
        print(f"ray-pipelines filter: {_reason(e)}", file=sys.stderr)
        return 1
    try:
        job_split = None
        if settings is None:
            base = without_unused_bounds(manifest.get("config", {}).get("filter"))
            settings = load_filter_settings(None, args.overrides, base=base, scores=table.scores)
            job_split = (base or {}).get("train_split", "train")
        settings.rules(table.scores, section="")  # this tool's --set keys are the filter section's own
        splits = table["split"].astype(str)
        if problem := settings.train_split_problem(splits, table.scores):
            # the job's own train_split (it warned and kept everything): the same, so a rerun writes its lists
            # again; one given here is likely mistyped (`training`), and would keep everything
            if settings.train_split != job_split:
                raise ValueError(f"{problem} ({settings.train_split_fix(splits)})")
            warnings.append(settings.keeps_everything(problem, splits))
    except ValueError as e:
        print(f"ray-pipelines filter: {e}", file=sys.stderr)
        return 2
    output = args.output or default_output
    storage = Storage(output, options)
    try:
        taken = other_output(output, score_output, options, given=bool(args.output))
        # beside the scores (or --output naming their root): a running job's commit rewrites the same files
        taken = taken or held_by_a_live_run(output, options)
        # s3fs's makedirs (gcsfs's, adlfs's) would create a mistyped --output's bucket
        no_bucket = missing_bucket(storage) if args.output else ""
    except storage_errors() as e:  # the output's store refusing: said as the job says it (its checks read too)
        print(f"ray-pipelines filter: {write_failure(e, storage.root) or f'{type(e).__name__}: {e}'}", file=sys.stderr)
        return 1
    if taken:
        print(f"ray-pipelines filter: {taken}", file=sys.stderr)
        return 2
    if no_bucket:
        print(
            f"ray-pipelines filter: write failed: no bucket {no_bucket!r} (or no right to see it): {output}; "
            "the filter tool makes none",
            file=sys.stderr,
        )
        return 1
    try:
        write_summaries(storage, table, settings.histogram_bins)
        report = write_filter_outputs(
            storage, table, settings, errors, scores_from=args.scores, storage_options=options
        )
    except (*storage_errors(), ValueError, KeyError) as e:
        print(f"ray-pipelines filter: {write_failure(e, storage.root) or _reason(e)}", file=sys.stderr)
        return 1
    print(format_filter_report(report))
    for warning in warnings + filter_warnings(report):
        print(f"ray-pipelines filter: warning: {warning}", file=sys.stderr)
    rules = "the score job's config (manifest.json)" if job_rules else args.config or "no config"
    print(f"  rules from           {rules}" + (f" and {len(args.overrides)} --set" if args.overrides else ""))
    print(f"  written to           {storage.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
