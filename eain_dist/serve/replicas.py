"""Model replicas in a Ray Data actor pool: what each actor gets, how many, with what resources.

The driver gathers the checkpoint once and puts the weights in Ray's object store; every actor
builds the model from them once, in its constructor. On CPU the actors' tables are views of the
object store's copy (one copy per machine, however many actors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
import torch
from torch import nn

from eain_dist.config import Config, load_config_dict, to_dict
from eain_dist.data.errors import InputError
from eain_dist.runtime import is_local
from eain_dist.serve.tables import RunModel, local_model

# Ray Data's read and write tasks: light work (Parquet decode / encode) beside the actors.
IO_TASK_CPUS = 0.25


@dataclass
class SharedModel:
    """A run's model as actors receive it: config and meta by value, weights by reference."""

    config: dict
    meta: dict
    weights: list  # [ObjectRef of {state_dict key: numpy array}]: a list, so Ray does not resolve it early

    @classmethod
    def put(cls, run: RunModel) -> "SharedModel":
        arrays = {key: tensor.numpy() for key, tensor in run.state.items()}
        return cls(to_dict(run.config), run.meta, [ray.put(arrays)])

    def build(self, device: torch.device) -> nn.Module:
        state = {key: torch.from_numpy(array) for key, array in ray.get(self.weights[0]).items()}
        return local_model(load_config_dict(self.config), self.meta, state, device)


@dataclass(frozen=True)
class ActorPool:
    actors: int
    num_cpus: float
    num_gpus: float
    torch_threads: int

    def map_batches_args(self) -> dict:
        return {"compute": ray.data.ActorPoolStrategy(size=self.actors), "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus}


def actor_pool(config: Config) -> ActorPool:
    """serve.actors replicas (0: one per GPU, or one per CPU), sized to leave room for Ray Data's I/O."""
    resources = ray.cluster_resources()
    if config.serve.use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise InputError("serve.use_gpu=true but the Ray cluster has no GPU")
        return ActorPool(config.serve.actors or gpus, 1.0, 1.0, 1)
    cpus = resources.get("CPU", 1)
    actors = config.serve.actors or max(1, int(cpus))
    per_actor = 1.0
    if is_local(config.ray):
        # One machine: leave one CPU to Ray Data, whose file listing is a 1-CPU task, or it never
        # starts (the actors' torch threads, set below, are what really uses the cores).
        per_actor = min(1.0, max(cpus - 1.0, 0.0) / actors)
    return ActorPool(actors, per_actor, 0.0, max(1, math.floor(cpus / actors)))


def device_for(pool: ActorPool) -> torch.device:
    """The actor's device (Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU); sets torch's threads."""
    torch.set_num_threads(pool.torch_threads)
    return torch.device("cuda") if pool.num_gpus else torch.device("cpu")


@ray.remote(num_cpus=0)
class Tally:
    """Counts from every actor, and the first user error (InputError) any of them hit.

    An actor that meets bad input records the message here and then returns empty batches, as
    do the others once they learn of it (`add` tells them): the dataset ends normally, its
    actors are shut down as usual, and the driver raises the recorded error (`run_and_check`).
    Raising inside the actor instead would reach the driver as Ray's own exception with the
    remote traceback as text, and a failed dataset can leave its actors holding CPUs.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.error: str | None = None

    def add(self, values: dict[str, float]) -> bool:
        """Add to the counts; True once some actor has hit a user error (stop working)."""
        for key, value in values.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)
        return self.error is not None

    def fail(self, message: str) -> None:
        self.error = self.error or message

    def snapshot(self) -> tuple[dict[str, int], str | None]:
        return dict(self.counts), self.error


def run_and_check(execute, tally) -> dict[str, int]:
    """On the driver: run the dataset, then raise the user error an actor recorded, if any."""
    execute()
    counts, error = ray.get(tally.snapshot.remote())
    if error is not None:
        raise InputError(error)
    return counts
