"""Read an offline W&B run file (`run-*.wandb`) without a W&B server or network.

The file is a LevelDB-style log of protobuf `Record`s (32 KiB blocks; each chunk has a 7-byte
header: crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte `:W&B` file header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes):
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        if kind == 0:
            position += left - 7
            continue
        chunk, position = data[position:position + length], position + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> tuple[list[dict], dict]:
    """(history rows, final summary) of one offline run file."""
    history, summary = [], {}
    for raw in _chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return history, summary


def read_run_info(path: Path) -> dict:
    """The run record of one offline run file: its name, group and job type."""
    for raw in _chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return {"name": record.run.display_name, "group": record.run.run_group, "job_type": record.run.job_type}
    raise ValueError(f"{path} holds no run record")


def read_artifacts(path: Path) -> list[dict]:
    """The artifacts an offline run file logs: type, name and the paths of their files."""
    artifacts = []
    for raw in _chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "artifact":
            manifest = record.artifact.manifest
            files = [entry.path for entry in manifest.contents]
            if manifest.manifest_file_path:  # large manifests travel as a file beside the record
                files += list(json.loads(Path(manifest.manifest_file_path).read_text()).get("contents", {}))
            artifacts.append({"type": record.artifact.type, "name": record.artifact.name, "files": files})
    return artifacts
