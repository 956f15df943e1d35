"""``python -m jobs.encode``: the encode job (defined in ``ray_pipelines/jobs/encode.py``)."""

import sys

from ray_pipelines.jobs.encode import main

if __name__ == "__main__":
    sys.exit(main())
