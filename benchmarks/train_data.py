"""The training benchmarks' data: generated reviews, prepared once, and the bare loops' batches."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

EAIN = Path(sys.executable).parent / "eain"
BATCH_SIZE = 1024
PREPARE_SETTINGS = ["data.format=amazon2023", "data.max_history=50", "sampling.negatives=1",
                    "sampling.strategy=uniform", "sampling.skive_above=true", "data.vocab=exact"]


def ensure_dataset(work: Path, reviews: int) -> Path:
    """Generate and prepare (once) the input; a DONE file records the parameters."""
    shape = {"reviews": reviews, "users": reviews // 8, "items": reviews // 20, "files": 2,
             "prepare": PREPARE_SETTINGS}
    raw, prepared = work / f"input-{reviews}", work / f"prepared-{reviews}"
    done = prepared / "DONE"
    if done.exists() and json.loads(done.read_text()) == shape:
        return prepared
    print(f"generating {reviews:,} reviews in {raw} and preparing {prepared}", flush=True)
    subprocess.run([str(EAIN), "generate", "--out", str(raw), "--users", str(shape["users"]), "--items",
                    str(shape["items"]), "--reviews", str(reviews), "--files", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    settings = [f"data.source={raw}/reviews", f"data.meta={raw}/meta", f"data.output={prepared}", "ray.num_cpus=2",
                *PREPARE_SETTINGS]
    subprocess.run([str(EAIN), "prepare", *[a for s in settings for a in ("--set", s)]], check=True)
    done.write_text(json.dumps(shape))
    return prepared


def parquet_batches(prepared: Path, split: str = "train", batch_size: int = BATCH_SIZE):
    """The split's rows in file order as Arrow tables of exactly `batch_size` rows (the last shorter),
    as Ray Data's iter_batches gives them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending, rows = [], 0
    for path in sorted(glob.glob(str(prepared / split / "*.parquet"))):
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            pending.append(record_batch)
            rows += record_batch.num_rows
            while rows >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size)
                rest = table.slice(batch_size)
                pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)
