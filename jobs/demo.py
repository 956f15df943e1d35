"""``python -m jobs.demo``: the demo (`make demo`) (defined in ``ray_pipelines/jobs/demo.py``)."""

import sys

from ray_pipelines.jobs.demo import main

if __name__ == "__main__":
    sys.exit(main())
