"""Where prepare's tasks run (eain_dist/data/tasks.py): the thread pool keeps Ray's task
semantics (results as arguments, several returns, wait, errors), and `auto` picks threads only
when no Ray cluster or instance is there and the input fits this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from eain_dist.config import load_config
from eain_dist.data import tasks as executors
from eain_dist.data.errors import InputError


def _pair(a, b):
    return a + b, a * b


def _chain(x, delay=0.0):
    time.sleep(delay)
    return x + 1


def _fail(value):
    raise InputError(f"bad value {value}")


@pytest.mark.parametrize("cpus", [1, 2])
def test_threads_pass_results_as_arguments_without_deadlock(cpus):
    """A chain of tasks, each taking the one before (submitted before it), finishes on one thread too."""
    tasks = executors.ThreadTasks(cpus)
    try:
        ref = tasks.put(0)
        for _ in range(20):
            ref = tasks.submit(_chain, ref, 0.001)
        total, product = tasks.submit(_pair, ref, tasks.submit(_chain, 2), num_returns=2)
        assert tasks.get([total, product]) == [23, 60]
        assert tasks.get(total) == 23
    finally:
        tasks.close()


def test_threads_wait_returns_what_is_done_within_the_timeout():
    tasks = executors.ThreadTasks(2)
    try:
        slow, fast = tasks.submit(_chain, 1, 0.5), tasks.submit(_chain, 1, 0.0)
        ready, pending = tasks.wait([slow, fast], num_returns=2, timeout=0.2)
        assert ready == [fast] and pending == [slow]
        ready, pending = tasks.wait([slow, fast], num_returns=1, timeout=5)
        assert len(ready) == 1 and len(pending) == 1
        ready, pending = tasks.wait([slow, fast], num_returns=2, timeout=5)
        assert set(ready) == {slow, fast} and pending == []
    finally:
        tasks.close()


def test_threads_raise_the_tasks_own_error():
    tasks = executors.ThreadTasks(2)
    try:
        with pytest.raises(InputError, match="bad value 7"):
            tasks.get(tasks.submit(_fail, tasks.submit(_chain, 6)))
    finally:
        tasks.close()


def test_task_memory_is_left_to_the_process_in_threads():
    from eain_dist.data.progress import TaskMemory

    tasks = executors.ThreadTasks(1)
    try:
        assert tasks.get(tasks.submit(lambda: TaskMemory().available)) is False
        assert threading.current_thread() is threading.main_thread() and not executors.in_process_task()
    finally:
        tasks.close()


def test_auto_fits_by_the_machines_memory():
    memory = executors.machine_memory()
    assert memory > 0
    fitting = int((executors.IN_PROCESS_MEMORY_FRACTION * memory - executors.IN_PROCESS_BASE_BYTES)
                  / executors.IN_PROCESS_BYTES_PER_REVIEW)
    assert executors.fits_in_process(fitting) and not executors.fits_in_process(fitting + 10_000)


def test_auto_uses_a_running_ray_instance(ray_local):
    chosen = executors.choose(load_config(overrides=["data.executor=auto"]), 1_000)
    assert not chosen.in_process and chosen.cpus() == int(ray_local.cluster_resources()["CPU"])
    threads = executors.choose(load_config(overrides=["data.executor=threads", "ray.num_cpus=3"]), 10**12)
    assert threads.in_process and threads.cpus() == 3
    threads.close()


@pytest.mark.slow
def test_eain_prepare_without_ray_runs_in_process(tmp_path):
    """A fresh `eain prepare` of a small input: no Ray starts (auto), and the rows equal Ray's."""
    from eain_dist.data.synthetic import generate

    generate(str(tmp_path / "in"), users=300, items=150, reviews=3000, files=2)
    base = [sys.executable, "-m", "eain_dist.cli", "prepare", "--set", f"data.source={tmp_path}/in/reviews",
            "--set", f"data.meta={tmp_path}/in/meta", "--set", "data.num_partitions=3"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    for executor in ("auto", "ray"):
        done = subprocess.run(base + ["--set", f"data.output={tmp_path}/{executor}", "--set", f"data.executor={executor}",
                                      "--set", "ray.num_cpus=2"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert ("in process" if executor == "auto" else "on Ray") in done.stdout
    metas = {e: json.loads((tmp_path / e / "meta.json").read_text()) for e in ("auto", "ray")}
    assert (metas["auto"]["executor"], metas["ray"]["executor"]) == ("threads", "ray")
    assert metas["auto"]["counts"] == metas["ray"]["counts"]
    from test_pipeline import splits_of

    assert splits_of(tmp_path / "auto") == splits_of(tmp_path / "ray")
