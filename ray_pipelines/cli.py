"""``ray-pipelines <job> --config FILE [--set key=value ...]`` and the tool commands.

Jobs live in ``ray_pipelines.jobs`` (``ray_pipelines/jobs/<name>.py``), each with a ``JOB``
class; ``python -m jobs.<name>`` in a checkout runs the same code as this CLI.
Exit codes (``EXIT_CODES``): 0 complete, 3 ran but incomplete (run again), 2 config or output
conflict, 1 could not run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

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
     storage_options, an output inside the input tree, or a live run holding the output's lease
  1  could not run: inputs not listable or matching nothing, the output store refusing writes
     (no space, read-only, permission, credentials; committed work is kept), a Ray failure"""
EXIT_COMPLETE, EXIT_FAILED, EXIT_CONFLICT, EXIT_INCOMPLETE = 0, 1, 2, 3

# tool commands -> module holding main(argv)
TOOLS = {
    "preview": "ray_pipelines.jobs.preview",  # spectrogram preview grid of an output
    "filter": "ray_pipelines.jobs.filter",  # re-run score filters from stored scores
}


def job_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"ray-pipelines {name}",
        description=f"Run the {name} job.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", "-c", help="YAML config file, or the name of a packaged example config (e.g. augment)."
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
        "--overwrite", action="store_true", help="Replace an output written with another config instead of refusing."
    )
    parser.add_argument(
        "--break-lease",
        action="store_true",
        help="Take the output's lease even from a run that looks alive (only when you know it is gone).",
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide Ray Data progress bars.")
    parser.add_argument("--quiet", "-q", action="store_true", help="Only print the summary.")
    return parser


def run_job_command(name: str, argv: Sequence[str]) -> int:
    from .config import ConfigError, load_config
    from .engine.control import OutputStoreError
    from .engine.manifest import OutputConflict
    from .engine.runner import run_job
    from .engine.summary import format_summary
    from .sources import SourceError

    args = job_parser(name).parse_args(list(argv))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    job_cls = importlib.import_module(JOBS[name]).JOB
    try:
        config = load_config(job_cls.config_model, args.config, args.overrides)
        job = job_cls(config)
        result = run_job(
            job,
            address=args.address,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            break_lease=args.break_lease,
        )
    except (ConfigError, OutputConflict) as e:
        print(f"ray-pipelines {name}: {e}", file=sys.stderr)
        return EXIT_CONFLICT
    except (SourceError, OutputStoreError) as e:
        print(f"ray-pipelines {name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # storage or Ray failures: one clear line, the traceback in the log
        logging.getLogger("ray_pipelines").debug("job failed", exc_info=True)
        print(f"ray-pipelines {name}: the job could not run: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(name, result, job.rows_label, job.throughput_units(result.run_rows)))
    if not result.complete:
        left = result.counts["to_retry"]
        print(f"ray-pipelines {name}: {left} inputs to retry; run again to finish", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_COMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = sorted([*JOBS, *TOOLS])
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: ray-pipelines {{{','.join(commands)}}} [options]\n"
            "Run `ray-pipelines <command> --help` for a command's options."
        )
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in JOBS:
        return run_job_command(command, rest)
    if command in TOOLS:
        return int(importlib.import_module(TOOLS[command]).main(rest) or 0)
    print(f"ray-pipelines: unknown command {command!r}; choose one of {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
