"""``python -m jobs.preview``: the preview tool (defined in ``ray_pipelines/jobs/preview.py``)."""

import sys

from ray_pipelines.jobs.preview import main

if __name__ == "__main__":
    sys.exit(main())
