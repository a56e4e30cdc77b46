"""Ray job entrypoint for `eain prepare`: raw reviews to a prepared dataset, with Ray Data on the cluster's CPU workers.

    python jobs/submit.py prepare --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("prepare")
