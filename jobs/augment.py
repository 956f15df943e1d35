"""``python -m jobs.augment``: the augment job (defined in ``ray_pipelines/jobs/augment.py``)."""

import sys

from ray_pipelines.jobs.augment import main

if __name__ == "__main__":
    sys.exit(main())
