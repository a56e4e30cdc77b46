"""Starting Ray: local single-node mode or a cluster, the same code either way."""

from __future__ import annotations

import logging
import os

from eain_dist.config import RayConfig

LOCAL_ADDRESSES = (None, "", "local")


def is_local(ray_config: RayConfig) -> bool:
    return (ray_config.address or os.environ.get("RAY_ADDRESS")) in LOCAL_ADDRESSES


def init_ray(ray_config: RayConfig) -> None:
    """Connect to the configured cluster, or start a private local instance on loopback."""
    import ray

    if ray.is_initialized():
        return
    if is_local(ray_config):
        use_loopback()
        ray.init(num_cpus=ray_config.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=True)
    else:
        ray.init(address=ray_config.address or os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
    quiet_ray_data()


def use_loopback() -> None:
    """Make a local Ray instance bind 127.0.0.1 (not the machine's address), gloo use `lo`.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported; if it was imported
    before this call, its copy of the flag is updated too, before any node starts.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.pop("RAY_ADDRESS", None)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_ray_data() -> None:
    """Our own stage messages replace Ray Data's per-operator progress logging."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
