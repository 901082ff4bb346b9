"""Small helpers every benchmark shares: latency summaries, page tables and figures,
CPU accounting (psutil), the machine and the code a run measured."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

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


# ------------------------------------------------------------------ pages


def fmt(v: Any, digits: int = 0, unit: str = "") -> str:
    """A figure for a page: thousands separated, ``digits`` decimals, ``unit`` after it;
    ``n/a`` for None, NaN and infinities; anything not a number as ``str``."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:,.{digits}f}{unit}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A GitHub-flavoured markdown table (tabulate), one line per list item; cells are
    written as given (already formatted: no number re-parsing)."""
    from tabulate import tabulate

    text = tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)
    return text.splitlines()


def report_head(command: str, quick: bool, config: dict[str, Any]) -> dict[str, Any]:
    """What every benchmark page's report opens with: the command that made it, when,
    on what machine, and its settings."""
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "quick": quick,
        "config": config,
    }


def write_page(out: Path, md_name: str, markdown: str, json_name: str, report: Any) -> list[Path]:
    """A benchmark's page and its figures: OUT/MD_NAME and OUT/JSON_NAME (created)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / md_name).write_text(markdown)
    (out / json_name).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return [out / md_name, out / json_name]


# ------------------------------------------------------------------ CPU accounting


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every live descendant
    (uvicorn workers); 0 for processes that are gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs, by anyone): the
    difference of two readings over a wall interval says how many cores were busy."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """Cores used between ``start()`` and ``stop()``: by the given server processes
    (and their workers), by this process (the clients), and by the whole machine."""

    def __init__(self, server_pids: Iterable[int] = ()) -> None:
        self.server_pids = list(server_pids)

    def _read(self) -> tuple[float, float, float, float]:
        own = psutil.Process().cpu_times()
        return (
            time.perf_counter(),
            sum(tree_cpu_s(p) for p in self.server_pids),
            own.user + own.system,
            machine_busy_s(),
        )

    def start(self) -> CpuMeter:
        self._start = self._read()
        return self

    def stop(self) -> dict[str, float]:
        """``wall_s``, ``cpu_s`` (this process) and cores: CPU seconds per wall second."""
        wall, server, own, machine = (b - a for a, b in zip(self._start, self._read(), strict=True))
        w = max(wall, 1e-9)
        return {
            "wall_s": wall,
            "cpu_s": own,
            "server_cores": server / w,
            "client_cores": own / w,
            "machine_busy_cores": machine / w,
        }


# ------------------------------------------------------------------ provenance


def loadavg() -> list[float]:
    return [round(x, 2) for x in psutil.getloadavg()]


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
    """What the figures were measured on: CPU (lscpu, psutil), memory, OS, Python, the
    library versions and the threads numba uses (if it is installed)."""
    lscpu = _lscpu()
    versions: dict[str, str] = {}
    for name in ("numpy", "numba", "torch", "fastapi", "uvicorn", "websockets", "gymnasium"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "not installed"
    info: dict[str, Any] = {
        "cpu_model": lscpu.get("Model name") or platform.processor() or platform.machine(),
        "cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "architecture": lscpu.get("Architecture") or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }
    if hasattr(psutil.Process, "cpu_affinity"):  # Linux, Windows
        info["affinity"] = sorted(psutil.Process().cpu_affinity())
    if versions["numba"] != "not installed":
        import numba

        info["numba_num_threads"] = numba.config.NUMBA_NUM_THREADS
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
