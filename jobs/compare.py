"""Ray job entrypoint for `eain compare`: every model (and EAIN's ablations) trained one after the
other on the cluster by the same Ray Train path. compare.output (the table, the curves and the
run directories) is a path on the head node, like tune.output; put the checkpoints on S3 with
train.storage_path (each model gets its own prefix under it).

    python jobs/submit.py compare --config configs/amazon2023.yaml --ablations --set train.storage_path=s3://...
"""

from _entrypoint import run

if __name__ == "__main__":
    run("compare")
