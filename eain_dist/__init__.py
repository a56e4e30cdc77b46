"""eain-dist: EAIN on Amazon reviews, on Ray.

`load_model(path)` loads a model written by `eain export` as a plain `nn.Module` (no Ray, no
process group); see eain_dist/serve/exported.py.
"""

from __future__ import annotations


def load_model(path, device: str = "cpu"):
    """An exported model (`eain export --out PATH`) in eval mode: `model(batch).logits`."""
    from eain_dist.serve.exported import load_model as load

    return load(path, device)
