"""``python -m jobs.features``: the features job (defined in ``ray_pipelines/jobs/features.py``)."""

import sys

from ray_pipelines.jobs.features import main

if __name__ == "__main__":
    sys.exit(main())
