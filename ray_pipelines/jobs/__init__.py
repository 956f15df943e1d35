"""The jobs: each module defines a config model, its ``Job`` subclass (``JOB``) and ``main``.

``ray-pipelines <name>`` and ``python -m ray_pipelines.jobs.<name>`` run the same code; the
signal processing and the engine live in the rest of ``ray_pipelines``."""
