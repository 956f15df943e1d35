"""The shared engine: list -> skip committed -> decode -> stages -> sink -> commit.

A job describes *what* to compute (:class:`~ray_pipelines.engine.job.Job`);
:func:`~ray_pipelines.engine.runner.run_job` runs it on Ray with the
contracts every job keeps: deterministic, exactly once, every input
accounted for, streaming.

The names below load on first use: a training process that imports the readers
(which use ``engine.arrow``) does not import Ray with them.
"""

from importlib import import_module

_WHERE = {"Job": ".job", "StageSpec": ".job", "JobResult": ".runner", "run_job": ".runner"}

__all__ = ["Job", "JobResult", "StageSpec", "run_job"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
