"""Weights & Biases on rank 0 only, and the training-curves plot.

Ray Train V2 has no rank guard of its own (its `setup_wandb` starts a run on every worker), so
`Tracker` checks the rank itself. `wandb.mode: auto` (the default) follows `WANDB_MODE` when it
is set, else runs online with an API key and offline without one (sync later with
`wandb sync <run_dir>/wandb/offline-run-*`); any other `wandb.mode` is used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from eain_dist.config import Config, WandbConfig, run_config_dict


def wandb_mode(config: WandbConfig) -> str:
    if config.mode != "auto":
        return config.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """Logs from rank 0; on every other rank each call does nothing."""

    def __init__(self, config: Config, rank: int, run_dir: str, name: str | None = None):
        self.run = None
        mode = wandb_mode(config.wandb)
        if rank != 0 or mode == "disabled":
            return
        import wandb

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
                              name=name, config=run_config_dict(config), mode=mode, dir=run_dir, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, values: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def log_curves(self, history: list[dict], loss_curve: list[tuple[int, float]], path: str) -> None:
        if self.run is None:
            return
        import wandb

        plot_curves(history, loss_curve, path)
        self.run.log({"curves": wandb.Image(path)})

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


def plot_curves(history: list[dict], loss_curve: list[tuple[int, float]], path: str) -> None:
    """Training loss and validation AUC / gAUC (one point per evaluation) by step, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if loss_curve:
        steps, losses = zip(*loss_curve)
        left.plot(steps, losses, color="tab:blue")
    left.set(title="training loss (BCE)", xlabel="step", ylabel="loss")
    steps = [h["steps"] for h in history]
    right.plot(steps, [h["valid_auc"] for h in history], marker="o", label="valid AUC")
    right.plot(steps, [h["valid_gauc"] for h in history], marker="s", label="valid gAUC")
    right.set(title="validation", xlabel="step", ylabel="AUC")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
