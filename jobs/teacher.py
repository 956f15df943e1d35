"""``python -m jobs.teacher``: the teacher job (defined in ``ray_pipelines/jobs/teacher.py``)."""

import sys

from ray_pipelines.jobs.teacher import main

if __name__ == "__main__":
    sys.exit(main())
