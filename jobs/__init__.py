"""Thin entry points for a checkout: ``python -m jobs.<name> --config NAME`` runs
``ray-pipelines <name>``. The jobs themselves live in ``ray_pipelines.jobs``; this folder is
not installed (``jobs`` is a name other projects use). ``jobs/configs`` links to the packaged
example configs in ``ray_pipelines/configs``."""
