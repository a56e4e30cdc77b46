"""An exported model directory and its plain-PyTorch loader (no Ray, no process group).

    <dir>/model.safetensors   the model's state_dict, every table full-size (gathered from shards)
    <dir>/config.yaml         the run's resolved config (the model is `build_model(config.model, meta)`)
    <dir>/meta.json           the prepared dataset's meta.json: tables, features, max_history
    <dir>/vocab/<table>.parquet   raw id -> index (`raw`, `index`, `count`), exact vocabularies only
    <dir>/export.json         where it came from: run, checkpoint, model, parameters
    <dir>/_SUCCESS            written last

    model = eain_dist.load_model("exported/")
    batch = eain_dist.data.loader.to_tensors(arrow_table, model_meta["max_history"])
    scores = torch.sigmoid(model(batch).logits)
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from eain_dist.config import load_config
from eain_dist.data.errors import InputError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
META = "meta.json"
ABOUT = "export.json"
FORMAT = "eain-dist-model/1"


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    """The exported model as an `nn.Module` in eval mode: `model(batch).logits` for a batch of
    `eain_dist.data.loader.to_tensors`."""
    from safetensors.torch import load_file

    from eain_dist.serve.tables import local_model

    folder = Path(path)
    for name in (WEIGHTS, CONFIG, META):
        if not (folder / name).is_file():
            raise InputError(f"{path} is not an exported model (no {name}); make one with `eain export`")
    config = load_config(folder / CONFIG)
    meta = json.loads((folder / META).read_text())
    return local_model(config, meta, load_file(str(folder / WEIGHTS), device=device), device)
