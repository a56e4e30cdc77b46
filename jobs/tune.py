"""Ray job entrypoint for `eain tune`: a Ray Tune search over the trainer, its trials side by side on the cluster.

    python jobs/submit.py tune --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("tune")
