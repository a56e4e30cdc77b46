"""Ray job entrypoint: `eain tune` (a Ray Tune search over the trainer) on the cluster the job runs in.

    python jobs/submit.py tune --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("tune")
