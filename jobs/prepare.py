"""Ray job entrypoint: `eain prepare` (raw reviews -> prepared dataset (Ray Data)) on the cluster the job runs in.

    python jobs/submit.py prepare --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("prepare")
