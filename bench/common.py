"""Small helpers the suite shares: latency summaries, CPU accounting, the machine and
the code a run measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)
REPO = Path(__file__).resolve().parent.parent


def summarize_us(samples: Iterable[float]) -> dict[str, Any]:
    """``n, mean, p50, p90, p99, min, max`` of the finite samples (microseconds in,
    microseconds out); every figure ``None`` when there is none. Percentiles are
    numpy's default (linear interpolation between order statistics)."""
    arr = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        empty = ("mean", *(f"p{p}" for p in PERCENTILES), "min", "max")
        return {"n": 0, **dict.fromkeys(empty)}
    pct = np.percentile(arr, PERCENTILES)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        **{f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


# ------------------------------------------------------------------ CPU accounting


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every live descendant (uvicorn workers)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        total += _proc_cpu_s(p)
        stack.extend(_children(p))
    return total


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall seconds) since boot, from /proc/stat:
    the difference of two readings says how many cores were busy, by anyone."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return 0.0, time.monotonic()
    jiffies = [int(x) for x in parts]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


class CpuMeter:
    """Cores used between ``start()`` and ``stop()``: by the given server processes
    (and their workers), by this process (the clients), and by the whole machine."""

    def __init__(self, server_pids: Iterable[int] = ()) -> None:
        self.server_pids = list(server_pids)

    def start(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._server = sum(tree_cpu_s(p) for p in self.server_pids)
        self._self = time.process_time()
        self._machine = machine_busy_s()[0]
        return self

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t
        server = sum(tree_cpu_s(p) for p in self.server_pids) - self._server
        own = time.process_time() - self._self
        machine = machine_busy_s()[0] - self._machine
        w = max(wall, 1e-9)
        return {
            "wall_s": wall,
            "server_cores": server / w,
            "client_cores": own / w,
            "machine_busy_cores": machine / w,
        }


# ------------------------------------------------------------------ provenance


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU (lscpu), OS, Python and library versions."""
    lscpu = _lscpu()
    versions: dict[str, str] = {}
    for name in ("numpy", "numba", "torch", "fastapi", "uvicorn", "websockets", "gymnasium"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "not installed"
    info: dict[str, Any] = {
        "cpu_model": lscpu.get("Model name") or platform.processor(),
        "cpus": lscpu.get("CPU(s)") or str(os.cpu_count()),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "architecture": lscpu.get("Architecture") or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    return info


def git_info() -> dict[str, Any]:
    """Commit of the checkout and the paths with uncommitted changes (others' work
    in a shared tree shows up here too)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:  # a copy of the tree without .git: the caller may say which commit
        return {"commit": os.environ.get("S2LOOP_GIT_COMMIT"), "dirty_paths": None}
    # porcelain lines are "XY path": the first column may be a space, so no strip()
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    return {
        "commit": commit.strip(),
        "dirty_paths": [line[3:] for line in status.splitlines() if len(line) > 3],
    }
