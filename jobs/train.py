"""Ray job entrypoint for `eain train`: a prepared dataset to a run directory, with Ray Train on the cluster's workers.

    python jobs/submit.py train --config configs/amazon2023.yaml --set ...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("train")
