"""`eain export`: a run's best checkpoint as one model directory a serving system can take.

The layout and the loader are in `exported.py`. The directory is written aside and moved into
place (`output.py`); with W&B on (`wandb.mode`, as in training), it is also logged as a `model`
artifact of a run of job type `export`, in the run directory's `wandb/`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

from eain_dist.config import Config, dump_yaml
from eain_dist.data.fs import filesystem_for
from eain_dist.serve.exported import ABOUT, CONFIG, FORMAT, META, WEIGHTS
from eain_dist.serve.ids import VOCAB_TABLES, read_vocabulary
from eain_dist.serve.output import StagedOutput
from eain_dist.serve.tables import RunModel, load_run
from eain_dist.train.tracking import wandb_mode


def export(run_dir: str, out: str, overrides: list[str] | None = None, log=print) -> dict:
    """Write the export; returns what export.json holds (plus the W&B artifact's name, if logged)."""
    run = load_run(run_dir, overrides)
    about = {"format": FORMAT, "run": str(Path(run_dir).resolve()), "checkpoint": run.checkpoint,
             "model": run.config.model.name, "prepared_dataset": run.config.data.output,
             "parameters": int(sum(t.numel() for t in run.state.values())),
             "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with StagedOutput(out, run.config.data.s3) as staging:
        _write(staging, run, about)
        staging.commit({"command": "export", **about})
    log(f"export: {about['model']} ({about['parameters']:,} parameters) from {run.checkpoint} -> {out}")
    artifact = _log_artifact(run, out, about)
    if artifact:
        log(f"export: logged to W&B as model artifact {artifact}")
    return {**about, "artifact": artifact}


def _write(staging: StagedOutput, run: RunModel, about: dict) -> None:
    from safetensors.torch import save_file

    fs, root = staging.fs, staging.path
    with tempfile.TemporaryDirectory() as local:  # safetensors writes a local file; the output may be s3://
        weights = Path(local) / WEIGHTS
        save_file({k: t.contiguous() for k, t in run.state.items()}, str(weights),
                  metadata={"format": FORMAT, "model": run.config.model.name})
        fs.put_file(str(weights), f"{root}/{WEIGHTS}")
    _write_text(fs, f"{root}/{CONFIG}", dump_yaml(run.config))
    _write_text(fs, f"{root}/{META}", json.dumps(run.meta, indent=2, default=str))
    _write_text(fs, f"{root}/{ABOUT}", json.dumps(about, indent=2))
    _copy_vocabularies(run.config, run.meta, fs, f"{root}/vocab")


def _write_text(fs, path: str, text: str) -> None:
    with fs.open(path, "w") as handle:
        handle.write(text)


def _copy_vocabularies(config: Config, meta: dict, fs, folder: str) -> None:
    """vocab/<table>.parquet of the prepared dataset, checked against meta.json, one file each."""
    import pyarrow.parquet as pq

    if meta.get("vocab") == "hashed":
        return  # hashed ids need no table: index = 1 + stable_hash(raw) mod (rows - 1)
    fs.makedirs(folder, exist_ok=True)
    for table in VOCAB_TABLES:
        ids = read_vocabulary(config.data.output, table, meta["tables"][table], config.data.s3)
        with fs.open(f"{folder}/{table}.parquet", "wb") as handle:
            pq.write_table(ids, handle)


def _log_artifact(run: RunModel, out: str, about: dict) -> str | None:
    mode = wandb_mode(run.config.wandb)
    if mode == "disabled":
        return None
    import wandb

    fs, path = filesystem_for(out, run.config.data.s3)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{run.config.model.name}-{run.run_dir.resolve().name}")
    with tempfile.TemporaryDirectory() as local:
        if not _is_local(fs):
            fs.get(path, local, recursive=True)
        wandb_run = wandb.init(project=run.config.wandb.project, entity=run.config.wandb.entity,
                               group=run.config.wandb.group, job_type="export", name=f"export-{name}",
                               mode=mode, dir=str(run.run_dir), reinit="finish_previous",
                               settings=wandb.Settings(silent=True, console="off"))
        artifact = wandb.Artifact(name, type="model", metadata=about)
        artifact.add_dir(path if _is_local(fs) else local)
        wandb_run.log_artifact(artifact)
        wandb_run.finish()
    return name


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)

