"""Ray job entrypoint: `eain train` (prepared dataset -> run directory (Ray Train)) on the cluster the job runs in.

    python jobs/submit.py train --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("train")
