"""What every benchmark script shares: free ports, machine facts, peak memory, writing results.

Standard library only, so that a child process in another venv (benchmarks/tables.py's TorchRec
arm) can import it too.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HASH_MULTIPLIER = 2_654_435_761  # Knuth's multiplicative hash: scatters Zipf ranks over the rows
RESULTS = Path(__file__).parent / "results"
GIB = 1 << 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_info(*packages: str) -> dict:
    """Processor, cores, memory, Python, the versions of `packages` (those importable), the
    date, the load average and the commit of the package code."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"processor": cpu, "cpu_count": os.cpu_count(), "memory_gib": round(meminfo("MemTotal") / GIB, 1),
            "memory_available_gib_at_start": round(meminfo("MemAvailable") / GIB, 1),
            "python": platform.python_version(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "load_average_at_start": os.getloadavg(), "code": code_version()}
    for name in packages:
        try:
            info[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            info[name] = None
    return info


def meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes (MemTotal, MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def code_version() -> str:
    """The commit the package code came from, '+dirty' when eain_dist/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "eain_dist") else "")


def write_results(name: str, report: dict, markdown: str, out: Path = RESULTS) -> None:
    """<out>/<name>.json and <out>/<name>.md, and say so."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(f"wrote {out / name}.json and {out / name}.md")


def zipf_ids(rng, size, rows: int, exponent: float):
    """Bounded Zipf ranks in [1, rows] (continuous inverse CDF), hashed to rows in [0, rows);
    `rng` a numpy Generator. The hash is a permutation when gcd(multiplier, rows) == 1 (checked)."""
    import math

    import numpy as np

    assert math.gcd(HASH_MULTIPLIER % rows, rows) == 1, "the id hash must be a permutation of the rows"
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        ranks = np.floor(np.exp(u * math.log(rows)))
    else:
        a = 1.0 - exponent
        ranks = np.floor((1.0 + u * (rows ** a - 1.0)) ** (1.0 / a))
    ranks = np.clip(ranks.astype(np.int64), 1, rows) - 1
    return (ranks * (HASH_MULTIPLIER % rows)) % rows
