"""Measuring a command as a benchmark: wall seconds and peak memory of its whole process tree
(psutil, so not in benchmarks/common.py, which is standard library only).

Memory, sampled every 0.2 s while the command runs:
- tree PSS: the summed proportional set size of the command and all its descendants (Ray's
  raylet, GCS and workers): shared pages (Ray's object store in /dev/shm) divided among their
  sharers, so the tree's own footprint, object store included, unmoved by other processes;
- tree RSS: the same without dividing shared pages (object-store pages count once per process);
- object store: the blocks allocated to the /dev/shm file the command's raylet maps (other Ray
  instances on the machine share /dev/shm, not this file).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil  # noqa: E402

from common import ROOT

SAMPLE_S = 0.2
MIB = 1 << 20


class TreeMemory(threading.Thread):
    """Peak PSS and RSS of a process tree, and the Ray object store it started."""

    def __init__(self, root: psutil.Process):
        super().__init__(daemon=True)
        self.root = root
        self.stop_event = threading.Event()
        self.peak_pss = self.peak_rss = self.peak_store = 0
        self.raylet: psutil.Process | None = None
        self.store_maps: list[str] = []
        self.samples = 0
        self.seen: dict[int, psutil.Process] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(SAMPLE_S)

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = 0
        for process in tree:
            try:
                memory = process.memory_full_info()
                rss, pss = rss + memory.rss, pss + memory.pss
                if process.pid not in self.seen:
                    self.seen[process.pid] = process
                    if any(arg.startswith("--object_store_memory=") for arg in process.cmdline()):
                        self.raylet = process
            except psutil.Error:
                continue
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_store = max(self.peak_store, self._store_allocated())
        self.samples += 1

    def _store_allocated(self) -> int:
        if self.raylet is None:
            return 0
        try:
            if not self.store_maps or self.samples % 25 == 0:  # new mappings appear as the store grows
                self.store_maps = [f"/proc/{self.raylet.pid}/map_files/{m.addr}"
                                   for m in self.raylet.memory_maps(grouped=False) if "plasma" in m.path]
            return sum({os.stat(p).st_ino: os.stat(p).st_blocks * 512 for p in self.store_maps}.values())
        except (OSError, psutil.Error):
            return 0

    def finish(self) -> None:
        self.stop_event.set()
        self.join()


def measure(command: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run a command to its end: wall seconds, exit status, memory peaks (MiB), its output."""
    load_before = load_average()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=ROOT)
        sampler = TreeMemory(psutil.Process(process.pid))
        sampler.start()
        returncode = process.wait()
        wall = time.perf_counter() - started
        sampler.finish()
    _wait_for_exit(sampler.seen.values())
    return {"wall_s": round(wall, 2), "returncode": returncode,
            "peak_tree_pss_mib": round(sampler.peak_pss / MIB), "peak_tree_rss_mib": round(sampler.peak_rss / MIB),
            "peak_object_store_mib": round(sampler.peak_store / MIB),
            "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": load_average(),
            "command": shlex.join(command), "output": log_path.read_text()}


def _wait_for_exit(processes, timeout_s: float = 30.0) -> None:
    """Ray's processes end shortly after their driver; the next measurement waits for them."""
    _, alive = psutil.wait_procs(list(processes), timeout=timeout_s)
    for process in alive:  # descendants of our own command only
        print(f"  (process {process.pid} still alive {timeout_s:.0f}s after its command; terminating it)")
        try:
            process.terminate()
        except psutil.Error:
            pass


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
