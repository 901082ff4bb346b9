"""Emulator benchmark: single-observation latency and batched throughput on one core.

What is measured (all through :meth:`hw.emulator.EmulatorBackend.infer`, the
path the service calls, so input checks, encoding, kernel, readout and the
result object are all included):

- single: ``infer(model, obs[1])`` called N times, each with another
  observation from a pool of random CartPole-scale observations; wall time per
  call with ``perf_counter_ns``; median, p90, p99, mean.
- batched: ``infer(model, obs[B])`` repeated for at least ``min_time_s`` per
  batch size B; throughput = inferences / wall time.

Each measurement is repeated ``repeats`` times; the report gives every repeat
and the best one (lowest median latency, highest throughput), because on a
shared machine the slow repeats measure the neighbours, not the code. The
load average before and after is recorded so a reader can judge the noise.

Threads: the kernel is single-threaded; ``NUMBA_NUM_THREADS`` and the BLAS
thread counts are set to 1 before numba/numpy load, and ``cpu`` optionally pins
the process to one CPU.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import loadavg, machine_info  # noqa: E402

TARGET_SINGLE_MEDIAN_US = 50.0
TARGET_THROUGHPUT = 100_000.0
BATCH_SIZES = (1, 16, 256, 4096)


@dataclass
class EmulatorBenchConfig:
    """Single-observation latency and batched throughput of the emulator on one core
    (``s2loop bench emulator``; ``--quick``: fewer calls, shorter runs)."""

    quick: bool = False
    """fewer calls, shorter runs"""
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    """batch sizes of the throughput runs"""
    repeats: int = 3
    """repeats per measurement (the best is reported)"""
    single_calls: int = 20_000
    """single-observation calls per repeat"""
    min_time_s: float = 1.0
    """seconds each batched run lasts at least"""
    cpu: int | None = None
    """pin the process to this CPU"""
    model: str | None = None
    """artifact name/path (default: a random 2x64 network, 16 ticks)"""
    seed: int = 0
    """seed of the random network and the observations"""
    out: Path | None = None
    """also write the JSON report here"""

    @classmethod
    def make(cls, quick: bool = False, **kw: Any) -> EmulatorBenchConfig:
        base = {"quick": quick}
        if quick:
            base.update(single_calls=2_000, min_time_s=0.2, repeats=3)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def _observation_pool(n_obs: int, seed: int, size: int = 4096) -> np.ndarray:
    """Random observations at CartPole scale (most inside the normalisation range)."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 1.5, 0.15, 1.5] * ((n_obs + 3) // 4), dtype=np.float32)[:n_obs]
    return (rng.normal(size=(size, n_obs)) * scale).astype(np.float32)


def _single(backend: Any, name: str, pool: np.ndarray, calls: int) -> dict[str, float]:
    lat = np.empty(calls, dtype=np.int64)
    compute = np.empty(calls, dtype=np.float64)
    n = pool.shape[0]
    clock = time.perf_counter_ns
    for i in range(calls):
        obs = pool[i % n : i % n + 1]
        t0 = clock()
        res = backend.infer(name, obs)
        lat[i] = clock() - t0
        compute[i] = res.compute_us
    us = lat / 1e3
    return {
        "calls": calls,
        "median_us": float(np.median(us)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "backend_compute_median_us": float(np.median(compute)),
    }


def _batched(backend: Any, name: str, pool: np.ndarray, batch: int, min_time_s: float) -> dict:
    reps = max(1, -(-batch // pool.shape[0]))
    source = np.tile(pool, (reps, 1)) if reps > 1 else pool
    offsets = list(range(0, source.shape[0] - batch + 1, max(1, batch)))
    backend.infer(name, source[:batch])  # warm
    done = calls = 0
    t0 = time.perf_counter()
    while True:
        o = offsets[calls % len(offsets)]
        backend.infer(name, source[o : o + batch])
        calls += 1
        done += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time_s:
            break
    return {
        "batch": batch,
        "calls": calls,
        "inferences": done,
        "seconds": elapsed,
        "per_second": done / elapsed,
        "us_per_inference": elapsed / done * 1e6,
    }


def run_emulator_benchmark(cfg: EmulatorBenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-able report (see module docstring)."""
    if cfg.cpu is not None:
        os.sched_setaffinity(0, {cfg.cpu})
    from hw.artifact import load_artifact
    from hw.emulator import EmulatorBackend
    from hw.synthetic import random_artifact

    art = load_artifact(cfg.model) if cfg.model else random_artifact(seed=cfg.seed, name="bench")
    load_before = loadavg()
    t_load = time.perf_counter()
    backend = EmulatorBackend()
    backend.load(art)  # compiles or loads the numba cache
    load_s = time.perf_counter() - t_load
    pool = _observation_pool(art.observation_size, cfg.seed)
    for i in range(200):
        backend.infer(art.name, pool[i : i + 1])

    singles = [_single(backend, art.name, pool, cfg.single_calls) for _ in range(cfg.repeats)]
    batched: dict[str, list[dict]] = {}
    for b in cfg.batch_sizes:
        batched[str(b)] = [
            _batched(backend, art.name, pool, b, cfg.min_time_s) for _ in range(cfg.repeats)
        ]
    backend.close()

    best_single = min(singles, key=lambda r: r["median_us"])
    best_batched = {b: max(runs, key=lambda r: r["per_second"]) for b, runs in batched.items()}
    largest = str(max(cfg.batch_sizes))
    report = {
        "benchmark": "emulator",
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        "model": {
            "name": art.name,
            "layer_sizes": art.layer_sizes,
            "input_size": art.input_size,
            "ticks": art.ticks,
            "encoder": art.encoder.kind,
        },
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "model_load_s": load_s,
        "single": {"best": best_single, "repeats": singles},
        "batched": {b: {"best": best_batched[b], "repeats": runs} for b, runs in batched.items()},
        "targets": {
            "single_median_us": TARGET_SINGLE_MEDIAN_US,
            "throughput_per_s": TARGET_THROUGHPUT,
            "single_met": best_single["median_us"] <= TARGET_SINGLE_MEDIAN_US,
            "throughput_met": best_batched[largest]["per_second"] >= TARGET_THROUGHPUT,
            "throughput_batch": int(largest),
        },
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = report["model"]
    mach = report["machine"]
    console.print(
        f"emulator benchmark: model {m['name']} layers {m['layer_sizes']} "
        f"({m['input_size']} inputs, {m['ticks']} ticks, {m['encoder']} encoder)"
    )
    console.print(
        f"machine: {mach['cpu_model']} ({mach['cpus']} CPUs), numba "
        f"{mach['versions']['numba']} threads={mach['numba_num_threads']}, load avg "
        f"{report['loadavg_before']} -> {report['loadavg_after']}"
    )
    s = report["single"]
    t1 = Table(title="single observation latency (EmulatorBackend.infer), microseconds")
    for col in ("repeat", "median", "p90", "p99", "mean", "backend compute median"):
        t1.add_column(col, justify="right")
    for i, r in enumerate(s["repeats"]):
        mark = " *" if r is s["best"] or r == s["best"] else ""
        t1.add_row(
            f"{i + 1}{mark}",
            f"{r['median_us']:.1f}",
            f"{r['p90_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['mean_us']:.1f}",
            f"{r['backend_compute_median_us']:.1f}",
        )
    console.print(t1)
    t2 = Table(title="batched throughput (inferences/s; best of repeats, all repeats)")
    for col in ("batch", "best /s", "us / inference", "all repeats /s"):
        t2.add_column(col, justify="right")
    for b, d in report["batched"].items():
        best = d["best"]
        t2.add_row(
            b,
            f"{best['per_second']:,.0f}",
            f"{best['us_per_inference']:.2f}",
            ", ".join(f"{r['per_second']:,.0f}" for r in d["repeats"]),
        )
    console.print(t2)
    tg = report["targets"]
    console.print(
        f"targets: single median <= {tg['single_median_us']:.0f} us: "
        f"{'met' if tg['single_met'] else 'NOT met'} ({s['best']['median_us']:.1f} us); "
        f"throughput >= {tg['throughput_per_s']:,.0f}/s at batch {tg['throughput_batch']}: "
        f"{'met' if tg['throughput_met'] else 'NOT met'} "
        f"({report['batched'][str(tg['throughput_batch'])]['best']['per_second']:,.0f}/s)"
    )
