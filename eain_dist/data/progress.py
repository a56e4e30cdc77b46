"""What a user sees while `eain prepare` runs: a line per finished stage with its seconds, and
while a stage runs, a line every `every_s` seconds with its tasks done and rows per second."""

from __future__ import annotations

import time
from typing import Callable

from eain_dist.data.tasks import in_process_task

PROGRESS_EVERY_S = 15.0


def print_now(line: str) -> None:
    """The default log: a line reaches a file or pipe as soon as it is printed."""
    print(line, flush=True)


class Progress:
    def __init__(self, tasks, log, every_s: float = PROGRESS_EVERY_S):
        self.tasks = tasks  # the executor whose tasks `gather` waits for
        self.log, self.every_s = log, every_s
        self.stage_started = self.last_line = time.time()

    def done(self, what: str, rows: int | None = None) -> None:
        """`prepare: <what> (<seconds>s[, <rows/s> rows/s])`: benchmarks/prepare.py reads the stage
        times from these."""
        now = time.time()
        seconds = now - self.stage_started
        rate = f", {rows / max(seconds, 1e-9):,.0f} rows/s" if rows else ""
        self.log(f"prepare: {what} ({seconds:.1f}s{rate})")
        self.stage_started = self.last_line = now

    def running(self, what: str, done: int, total: int, rows: int | None = None) -> None:
        now = time.time()
        if now - self.last_line < self.every_s:
            return
        rate = f", {rows:,} rows, {rows / max(now - self.stage_started, 1e-9):,.0f} rows/s" if rows else ""
        self.log(f"prepare:   {what}: {done:,} of {total:,} tasks done{rate}")
        self.last_line = now


def gather(refs: list, progress: Progress, what: str, rows: Callable[[object], int] | None = None) -> list:
    """get(refs), reporting progress while waiting; results in the order of refs."""
    tasks = progress.tasks
    results: dict = {}
    pending = list(refs)
    counted = 0
    while pending:
        ready, pending = tasks.wait(pending, num_returns=len(pending), timeout=progress.every_s / 3)
        for ref, value in zip(ready, tasks.get(ready)):
            results[ref] = value
            counted += rows(value) if rows else 0
        progress.running(what, len(results), len(refs), counted if rows else None)
    return [results[ref] for ref in refs]


class TaskMemory:
    """A task's peak resident memory (MiB), for meta.json: what a node needs per running task.
    Linux only (the process's high-water mark, reset when the task starts); None elsewhere, and in
    process (threads share the process: its peak is the benchmark's to measure)."""

    def __init__(self):
        if in_process_task():
            self.available = False
            return
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.available = True
        except OSError:
            self.available = False

    def peak_mib(self) -> int | None:
        if not self.available:
            return None
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("VmHWM:"))
        return int(line.split()[1]) // 1024


def peaks(summaries: list[dict], stage: str, into: dict) -> None:
    """The largest task peak of a stage, into meta.json's task_peak_rss_mib."""
    values = [s["peak_rss_mib"] for s in summaries if s.get("peak_rss_mib") is not None]
    if values:
        into[stage] = max(values + [into.get(stage, 0)])
