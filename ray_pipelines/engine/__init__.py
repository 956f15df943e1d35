"""The shared engine: list -> skip committed -> decode -> stages -> sink -> commit.

A job describes *what* to compute (:class:`~ray_pipelines.engine.job.Job`);
:func:`~ray_pipelines.engine.runner.run_job` runs it on Ray with the
contracts every job keeps: deterministic, exactly once, every input
accounted for, streaming.
"""

from .job import Job, StageSpec
from .runner import JobResult, run_job

__all__ = ["Job", "JobResult", "StageSpec", "run_job"]
