"""Where `eain prepare`'s tasks run: Ray tasks, or a thread pool inside this process.

Both offer the few operations the plan uses (submit with several returns, get, wait, put), and
a task's arguments may be the results of earlier tasks, as with Ray. The stages are Arrow,
numpy and polars calls that release the GIL, so threads keep the CPUs busy without Ray's start
(about 5 s here, 7 s with shutdown) and without copying every partition through an object store.

`data.executor: auto` runs in process when no Ray cluster is given, Ray is not already running
and the input is small enough for this machine's memory (IN_PROCESS_BYTES_PER_REVIEW); else Ray.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass

# Peak memory of an in-process prepare (benchmarks/results/prepare*.md, peak tree PSS): 1.7 GiB
# at 2M reviews, 3.3 GiB at 20M, 10.5 GiB at 100M: a base plus about 97 bytes per review. auto
# stays in process while base + 120 bytes per review (25% headroom) needs at most
# IN_PROCESS_MEMORY_FRACTION of the machine's memory (24 GiB: up to about 110M reviews).
IN_PROCESS_BASE_BYTES = 3 << 29
IN_PROCESS_BYTES_PER_REVIEW = 120
IN_PROCESS_MEMORY_FRACTION = 0.6

_thread = threading.local()  # in_process: True on the pool's threads


def in_process_task() -> bool:
    """True inside a task of the thread pool (where per-process measurements mean nothing)."""
    return getattr(_thread, "in_process", False)


# ----------------------------------------------------------------------------- Ray


class RayTasks:
    in_process = False

    def __init__(self):
        import ray

        self.ray = ray
        self._functions: dict = {}

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def largest_node_memory(self) -> int:
        return max((node["Resources"].get("memory", 0) for node in self.ray.nodes() if node["Alive"]), default=0)

    def submit(self, fn, *args, num_returns: int = 1, memory: int | None = None):
        """One reference, or a list of `num_returns` references (fn returns that many values)."""
        options = {"num_returns": num_returns, **({"memory": memory} if memory else {})}
        return self._remote(fn).options(**options).remote(*args)

    def _remote(self, fn):
        if fn not in self._functions:
            self._functions[fn] = self.ray.remote(fn)
        return self._functions[fn]

    def get(self, refs):
        return self.ray.get(refs)

    def wait(self, refs: list, num_returns: int, timeout: float):
        return self.ray.wait(refs, num_returns=num_returns, timeout=timeout)

    def put(self, value):
        return self.ray.put(value)

    def close(self) -> None:
        """Ray stays up: whoever started it stops it."""


# ----------------------------------------------------------------------------- threads


@dataclass(frozen=True)
class _Part:
    """The `index`-th value of a task that returns several (Ray's num_returns)."""

    future: cf.Future
    index: int


def _future(ref) -> cf.Future:
    return ref.future if isinstance(ref, _Part) else ref


def _value(ref):
    if isinstance(ref, _Part):
        return ref.future.result()[ref.index]
    return ref.result() if isinstance(ref, cf.Future) else ref


class ThreadTasks:
    """Tasks on `cpus` threads of this process. A task waits for the tasks whose results it takes;
    those were submitted before it and the queue is first in, first out, so they are running or
    done by then: no deadlock with any number of threads."""

    in_process = True

    def __init__(self, cpus: int):
        self._cpus = max(1, cpus)
        self.pool = cf.ThreadPoolExecutor(self._cpus, thread_name_prefix="eain-prepare",
                                          initializer=_mark_in_process)

    def cpus(self) -> int:
        return self._cpus

    def largest_node_memory(self) -> int:
        return 0  # no nodes: a memory request is taken and ignored

    def submit(self, fn, *args, num_returns: int = 1, memory: int | None = None):
        future = self.pool.submit(_call, fn, args)
        return future if num_returns == 1 else [_Part(future, i) for i in range(num_returns)]

    def get(self, refs):
        return [_value(ref) for ref in refs] if isinstance(refs, list) else _value(refs)

    def wait(self, refs: list, num_returns: int, timeout: float):
        """(ready, pending) once `num_returns` are done or `timeout` seconds passed, as ray.wait."""
        deadline = time.time() + timeout
        while True:
            ready = [ref for ref in refs if _future(ref).done()]
            left = deadline - time.time()
            if len(ready) >= num_returns or left <= 0:
                break
            cf.wait({_future(ref) for ref in refs if not _future(ref).done()}, timeout=left,
                    return_when=cf.FIRST_COMPLETED)
        ready = ready[:num_returns]
        chosen = set(map(id, ready))
        return ready, [ref for ref in refs if id(ref) not in chosen]

    def done(self, ref) -> bool:
        return _future(ref).done()

    def put(self, value):
        future = cf.Future()
        future.set_result(value)
        return future

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _mark_in_process() -> None:
    _thread.in_process = True


def _call(fn, args):
    return fn(*[_value(arg) for arg in args])


# ----------------------------------------------------------------------------- the choice


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def fits_in_process(estimated_reviews: int) -> bool:
    needed = IN_PROCESS_BASE_BYTES + estimated_reviews * IN_PROCESS_BYTES_PER_REVIEW
    return needed <= IN_PROCESS_MEMORY_FRACTION * machine_memory()


def choose(config, estimated_reviews: int):
    """The executor for one prepare (data.executor); starts Ray when it is chosen and not running."""
    from eain_dist.runtime import init_ray, is_local

    executor = config.data.executor
    if executor == "auto":
        ray_running = _ray_running()
        local = is_local(config.ray) and not ray_running and fits_in_process(estimated_reviews)
        executor = "threads" if local else "ray"
    if executor == "threads":
        return ThreadTasks(config.ray.num_cpus or os.cpu_count() or 1)
    init_ray(config.ray)
    return RayTasks()


def _ray_running() -> bool:
    import sys

    ray = sys.modules.get("ray")  # never imported: certainly not running (and not worth importing)
    return bool(ray and ray.is_initialized())
