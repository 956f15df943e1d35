"""``python -m jobs.score``: the score job (defined in ``ray_pipelines/jobs/score.py``)."""

import sys

from ray_pipelines.jobs.score import main

if __name__ == "__main__":
    sys.exit(main())
