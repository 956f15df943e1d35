"""``ray-pipelines <job> --config FILE [--set key=value ...]`` and the tool commands.

Jobs live in ``ray_pipelines.jobs`` (``ray_pipelines/jobs/<name>.py``), each with a ``JOB``
class; ``python -m jobs.<name>`` in a checkout runs the same code as this CLI.
Exit codes (``EXIT_CODES``): 0 complete, 3 ran but incomplete (run again), 2 config or output
conflict, 1 could not run, 130 stopped by Ctrl-C, 143 stopped by SIGTERM (what was written is kept; a rerun
resumes: ``stopping.py``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .stopping import exit_code, exit_now, exit_on_stop, how, ignore_stop_signals, sigterm_stops_like_ctrl_c

if TYPE_CHECKING:
    from .engine.progress import ProgressDisplay

# job name -> module holding JOB (a Job subclass)
JOBS = {
    "augment": "ray_pipelines.jobs.augment",
    "teacher": "ray_pipelines.jobs.teacher",
    "encode": "ray_pipelines.jobs.encode",
    "features": "ray_pipelines.jobs.features",
    "score": "ray_pipelines.jobs.score",
}
# What a scheduler reads: retry on 3, alert on 1 and 2. Printed in every job's --help.
EXIT_CODES = """exit codes:
  0  complete: every input is output rows or a final error (errors.jsonl); _SUCCESS written
  3  ran but incomplete: inputs to retry remain (storage hiccups, lost workers); no _SUCCESS;
     run again to finish
  2  config or output conflict: a bad config, another job's or config's output, a secret in
     storage_options, an output inside the input tree or another run's output, or that is a
     file or below one, a local path another node of the cluster does not see, a relative
     output in a submitted job (inside Ray's copy of the working directory, or where the Ray
     head was started), a live run holding the output's lease, or this run fenced off by
     another that took the lease over
  1  could not run: inputs not listable or matching nothing, the output store refusing writes
     (no space, read-only, permission, credentials, no such bucket; committed work is kept),
     no cluster answering at --address / RAY_ADDRESS, a model file or download the network did
     not deliver, a Ray failure
  130, 143  stopped by Ctrl-C (SIGINT), by SIGTERM (ray job stop, timeout, docker stop):
     what was written is kept; rerun to resume (without --overwrite: it only replaces another
     config's output)"""
EXIT_COMPLETE, EXIT_FAILED, EXIT_CONFLICT, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left (help, configs)

# tool commands -> module holding main(argv)
TOOLS = {
    "preview": "ray_pipelines.jobs.preview",  # spectrogram preview grid of an output
    "filter": "ray_pipelines.jobs.filter",  # re-run score filters from stored scores
}


# ---- argument parsing -------------------------------------------------------------------
def job_parser(name: str, config_model=None) -> argparse.ArgumentParser:
    """The job's options; with ``config_model``, ``--help`` also lists every config key."""
    from .config_docs import keys_help, packaged_configs_table

    epilog = EXIT_CODES
    if config_model is not None:
        examples = packaged_configs_table(name)
        epilog = (
            f"config keys (set in the YAML file or with --set KEY=VALUE):\n{keys_help(config_model)}\n\n"
            + (f"packaged example configs (--config NAME):\n{examples}\n\n" if examples else "")
            + EXIT_CODES
        )
    parser = argparse.ArgumentParser(
        prog=f"ray-pipelines {name}",
        description=f"Run the {name} job.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "-c",
        help="YAML config file, or the name of a packaged example config (`ray-pipelines configs` lists them).",
    )
    parser.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config key (dotted for nested keys); repeatable.",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray).")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an output written by another job or config instead of refusing (one of this job and "
        "config is resumed as without it; delete it to start over).",
    )
    parser.add_argument(
        "--break-lease",
        action="store_true",
        help="Take the output's lease even from a run that looks alive (only when you know it is gone).",
    )
    config = parser.add_argument_group("config")
    config.add_argument(
        "--print-config",
        action="store_true",
        help="Print the merged config (every default filled in) as YAML, and exit. Runs as is with --config.",
    )
    config.add_argument("--schema", action="store_true", help="Print the config's JSON schema, and exit.")
    console = parser.add_argument_group("console")
    console.add_argument(
        "--quiet", "-q", action="store_true", help="No progress display: only warnings, errors and the summary."
    )
    console.add_argument("--no-progress", action="store_true", help="The same as --quiet.")
    console.add_argument(
        "--verbose", "-v", action="store_true", help="Show Ray's own log lines, workers' output and full tracebacks."
    )
    console.add_argument("--ray-progress", action="store_true", help="Also show Ray Data's own progress display.")
    return parser


def main_help() -> str:
    from . import __version__

    return (
        f"ray-pipelines {__version__}: turn raw audio collections into ML-ready datasets on Ray.\n\n"
        "usage: ray-pipelines <job> --config FILE|NAME [--set KEY=VALUE ...] [options]\n"
        "       ray-pipelines <tool> [options]\n\n"
        f"jobs:  {', '.join(JOBS)}\n"
        f"tools: {', '.join(TOOLS)}\n"
        "       configs [NAME]   list the packaged example configs, or print one\n\n"
        "Run `ray-pipelines <command> --help` for a command's options (a job's lists its config keys).\n"
        "ray-pipelines --version prints the versions."
    )


# ---- commands ---------------------------------------------------------------------------
def run_job_command(name: str, argv: Sequence[str] | None = None, *, program: bool | None = None) -> int:
    """The job ``name`` with the command line ``argv`` (None: this process's). ``program``: this call is the
    process's own command (by default when ``argv`` is None): once its run has ended, a stop ends it with
    the run's exit code (:func:`~ray_pipelines.stopping.exit_on_stop`), and it ends without the interpreter's
    shutdown (:func:`~ray_pipelines.stopping.exit_now`) rather than returning."""
    program = argv is None if program is None else program
    argv = sys.argv[1:] if argv is None else argv
    from .config import ConfigError, load_config
    from .config_docs import config_yaml, json_schema, tool_of_config

    job_cls = importlib.import_module(JOBS[name]).JOB
    from .engine.timeline import mark

    mark("job module imported")
    args = job_parser(name, job_cls.config_model).parse_args(list(argv))
    if args.schema:
        print(json_schema(job_cls.config_model))
        return 0
    tool = tool_of_config(args.config) if args.config is not None else None
    if tool:  # its keys are a section of the score config: key-by-key "unknown key" errors named no cause
        print(
            f"ray-pipelines {name}: {args.config} is the {tool} tool's packaged config, not a job's: "
            f"ray-pipelines {tool} SCORES --config {args.config}",
            file=sys.stderr,
        )
        return EXIT_CONFLICT
    try:
        config = load_config(job_cls.config_model, args.config, args.overrides)
    except ConfigError as e:
        hint = "\n(--print-config prints a config that validates: give the required keys with --set or --config)"
        print(f"ray-pipelines {name}: {e}{hint if args.print_config else ''}", file=sys.stderr)
        return EXIT_CONFLICT
    if args.print_config:
        print(config_yaml(name, config), end="")
        return 0
    code = _run(name, job_cls, config, args, program)
    if program:  # (a stopped run's code included: its stop is over)
        exit_on_stop(code)
    from .engine.manifest import stop_point

    stop_point("cli:done")  # tests hold the program here, its run over and its summary printed
    if program:
        exit_now(code)
    return code


def _run(name: str, job_cls, config, args: argparse.Namespace, program: bool = False) -> int:
    """Run the job with the live progress; the summary at the end (exit codes: module docstring)."""
    from .config import ConfigError
    from .console import FilteredStderr, configure_logging
    from .engine.control import OutputStoreError
    from .engine.manifest import OutputConflict
    from .engine.progress import make_progress
    from .engine.runner import run_job
    from .engine.summary import format_summary
    from .error_text import short_error
    from .model_files import ModelUnreachable
    from .sources import SourceError

    configure_logging(args.verbose, args.ray_progress)
    ray_was_running = _ray_running()  # a caller's Ray (tests, notebooks) stays up
    # SIGTERM unwinds the run as Ctrl-C does: what was written is kept, the lease released, Ray shut down
    with sigterm_stops_like_ctrl_c(keep_ignored=program), FilteredStderr(enabled=not args.verbose) as console:
        counts = make_progress(name, job_cls.rows_label, console, quiet=args.quiet or args.no_progress)
        late_stop = ""
        try:
            job = job_cls(config)  # may load a model: its errors are the job's
            try:
                result = run_job(
                    job,
                    address=args.address,
                    overwrite=args.overwrite,
                    progress=args.ray_progress,
                    monitor=counts,
                    break_lease=args.break_lease,
                )
            except KeyboardInterrupt as stop:
                if not _success_written(counts, config):
                    raise
                result, late_stop = None, how(stop)  # it came as the run released its lease, done
            # The run is over and what it did is committed (_SUCCESS, or inputs to retry): a stop from here
            # on would only cut Ray's shutdown short, and exit 130 or 143 beside a _SUCCESS this run wrote.
            ignore_stop_signals()
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (stopping.Terminated)
            ignore_stop_signals()
            print(_stopped_message(name, counts, how(stop)), file=console, flush=True)
            return exit_code(stop)
        # A failed run is over too: a stop while Ray shuts down (the finally below) would replace its exit
        # code 1 or 2 with 130/143, which says "stopped: rerun to resume" of a run that needs a fix.
        except (ConfigError, OutputConflict) as e:
            ignore_stop_signals()
            print(f"ray-pipelines {name}: {e}", file=sys.stderr)
            return EXIT_CONFLICT
        except (SourceError, OutputStoreError, ModelUnreachable) as e:
            ignore_stop_signals()
            print(f"ray-pipelines {name}: {e}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as e:  # storage or Ray failures: one clear line (the traceback with --verbose)
            ignore_stop_signals()
            if args.verbose:
                traceback.print_exc()
            logging.getLogger("ray_pipelines").debug("job failed", exc_info=True)
            reason = str(e) if args.verbose else short_error(str(e))  # a Ray error's text holds its traceback
            print(f"ray-pipelines {name}: the job could not run: {type(e).__name__}: {reason}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            if not ray_was_running:
                _shutdown_ray()
    code = EXIT_COMPLETE if result is None or result.complete else EXIT_INCOMPLETE
    if program:  # the run is over: a stop from here on ends the program with the run's own exit code
        exit_on_stop(code)
    if result is None:
        print(f"{name}: complete (_SUCCESS written in {config.output}); the stop ({late_stop}) came after it")
        return code
    try:
        print(format_summary(name, result, job.rows_label, job.throughput_units(result.run_rows)), flush=True)
    except BrokenPipeError:  # stdout's reader is gone (a log shipper, `| head`): the exit code still tells
        _stdout_to_devnull()
    from .engine.timeline import mark

    mark("summary printed")
    processed = result.counts["processed_this_run"]
    if processed and not result.run_rows:  # complete as documented, yet most likely a config or model to fix
        print(
            f"ray-pipelines {name}: none of the {processed} inputs this run processed gave a row (the most common "
            "errors are above, every one in errors.jsonl)",
            file=sys.stderr,
        )
    if code == EXIT_INCOMPLETE:
        left = result.counts["to_retry"]
        print(f"ray-pipelines {name}: {left} inputs to retry; run again to finish", file=sys.stderr)
    return code


def _success_written(counts: ProgressDisplay, config) -> bool:
    """Whether this run wrote ``_SUCCESS`` (its commit got that far, and the file is there): a stop that
    came after it stopped nothing, and an exit 130/143 would tell a scheduler to retry a finished run."""
    from .engine.manifest import SUCCESS_FILE
    from .storage import Storage

    try:
        return counts.success_reached and Storage(config.output, config.storage_options).exists(SUCCESS_FILE)
    except Exception:  # the store does not answer: the stop is what is known
        return False


def _stopped_message(name: str, counts: ProgressDisplay, how: str) -> str:
    if not counts.to_do:  # before the listing was done (connecting, listing): no input was written
        return f"\n{name}: stopped ({how}) before it processed any input."
    kept = f"{counts.inputs_done} of {counts.to_do} inputs ({counts.rows} {counts.rows_label})"
    before = f", besides the {counts.skipped} committed before" if counts.skipped else ""
    # Blocks already writing when the stop came still commit, and a write's report reaches the count after
    # its files: the count is a floor.
    return (
        f"\n{name}: stopped ({how}). This run wrote at least {kept} before the stop{before}, and the blocks "
        f"that finished writing as it stopped; what was written is kept.\n"
        f"Run the same command again to resume: committed inputs are skipped."
    )


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _shutdown_ray() -> None:
    """Disconnect from Ray; an embedded Ray stops its processes here, inside the stderr filter
    (Ray's own atexit hook would do it later, outside)."""
    if _ray_running():
        from .engine.manifest import stop_point
        from .engine.timeline import mark

        mark("ray.shutdown start")
        stop_point("ray:shutdown")  # tests hold the driver here
        sys.modules["ray"].shutdown()
        mark("ray.shutdown done")


CONFIGS_USAGE = """usage: ray-pipelines configs [NAME]

  configs        list the packaged example configs, each with what it runs
  configs NAME   print one (a packaged config's name, or a config file's path) to start your own:
                 ray-pipelines configs NAME > my-config.yaml"""


def configs_command(argv: Sequence[str]) -> int:
    """``ray-pipelines configs``: the packaged example configs; ``configs NAME``: print one."""
    from .config import ConfigError, resolve_config_path
    from .config_docs import TOOL_CONFIGS, packaged_configs_table

    if any(arg in ("-h", "--help") for arg in argv):
        print(CONFIGS_USAGE)
        return 0
    if len(argv) > 1:
        print(
            f"ray-pipelines configs: takes one NAME, not also {' '.join(argv[1:])!r}\n{CONFIGS_USAGE}", file=sys.stderr
        )
        return 2
    if not argv:
        print("packaged example configs (run one with `ray-pipelines <job> --config NAME`):")
        print(packaged_configs_table())
        for name, tool in TOOL_CONFIGS.items():  # not a job's config: `score --config score-filter` refuses it
            print(f"({name} is the {tool} tool's config: ray-pipelines {tool} SCORES --config {name})")
        print("\nPrint one to start your own: ray-pipelines configs NAME > my-config.yaml")
        return 0
    try:
        print(resolve_config_path(argv[0]).read_text(), end="")
    except (ConfigError, OSError) as e:  # a path that is not there, or a folder
        print(f"ray-pipelines configs: {e}", file=sys.stderr)
        return 2
    return 0


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{p} {installed(p)}" for p in ("ray", "torch", "torchaudio", "pyarrow"))
    return f"ray-pipelines {__version__} (python {sys.version.split()[0]}, {libraries})"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), program=argv is None)
    except KeyboardInterrupt as stop:  # before a job started (imports, listing): nothing was written
        print(f"\nray-pipelines: stopped ({how(stop)})", file=sys.stderr)
        return exit_code(stop)
    except BrokenPipeError:  # `ray-pipelines configs | head -1`: stop as a pipeline's writer does, quietly
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would raise once more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _main(argv: list[str], program: bool = False) -> int:
    commands = sorted([*JOBS, *TOOLS, "configs"])
    if not argv or argv[0] in ("-h", "--help"):
        print(main_help())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version_text())
        return 0
    command, rest = argv[0], argv[1:]
    if command in JOBS:
        return run_job_command(command, rest, program=program)
    if command in TOOLS:
        return int(importlib.import_module(TOOLS[command]).main(rest) or 0)
    if command == "configs":
        return configs_command(rest)
    guess = difflib.get_close_matches(command, commands, n=1)
    hint = f"did you mean {guess[0]}? " if guess else ""
    print(f"ray-pipelines: unknown command {command!r}; {hint}choose one of {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
