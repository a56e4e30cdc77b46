"""Ray job entrypoint for `eain prepare`: raw reviews to a prepared dataset, on Ray tasks across the cluster's CPU workers
(inside a job RAY_ADDRESS names the cluster, so `data.executor: auto` chooses Ray).

    python jobs/submit.py prepare --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("prepare")
