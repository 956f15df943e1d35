"""Job entry points: ``python -m jobs.<name> --config FILE`` (same as ``ray-pipelines <name>``).

Each module defines the job's config model, its ``Job`` subclass (``JOB``)
and ``main``; the signal processing and the engine live in ``ray_pipelines``.
"""
