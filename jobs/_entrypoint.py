"""What every job entrypoint does: run one `eain` command inside the Ray job it was submitted as.

A job's working directory is this checkout (uploaded by `jobs/submit.py`), so its `eain_dist`
comes first on the path: the job runs the code that was submitted, even where an older version
of the package is installed on the cluster. Inside a job RAY_ADDRESS points at the cluster, so
`eain` connects to it instead of starting a local instance.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: str) -> None:
    sys.path.insert(0, str(REPO))
    from eain_dist.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
