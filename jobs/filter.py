"""``python -m jobs.filter``: the score filters tool (defined in ``ray_pipelines/jobs/filter.py``)."""

import sys

from ray_pipelines.jobs.filter import main

if __name__ == "__main__":
    sys.exit(main())
