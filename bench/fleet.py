"""``s2loop bench fleet``: many robots, many boards, ``bench/FLEET.md``.

1. Coalescing on a board: ``tests.fleet_backends:TimedBoard`` (emulator answers, each
   call ``ceil(B / 37)`` board runs of ``S2LOOP_FAKE_BOARD_RUN_S``: the timing model, an
   assumption, not a board measurement), with and without coalescing, under 32
   concurrent closed-loop clients: throughput and latency.
2. Coalescing on the emulator at one client: on (a forced window) vs off (the default).
3. HAProxy (Debian's package, ``deploy/haproxy/haproxy.cfg``) in front of 3 replicas vs a
   replica directly, one client, interleaved; then SIGKILL of 1 replica under 8 clients.
4. One replica's throughput against the number of clients: the capacity plan's curve.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BENCH_DIR
from bench.common import fmt, report_head, table

MD_NAME = "FLEET.md"
JSON_NAME = "fleet.json"
ROOT = Path(__file__).resolve().parent.parent
OBS = [0.01, -0.2, 0.03, 0.25]


@dataclass
class FleetConfig:
    """Coalescing, HAProxy in front of replicas, capacity (``s2loop bench fleet``)."""

    board_run_s: float = 0.020  # one board run of the modelled board, seconds
    board_clients: int = 32  # clients of the modelled board
    load_s: float = 10.0  # seconds of each load run
    rounds: int = 20  # interleaved rounds of the balancer's latency
    block: int = 300  # requests per round
    scaling_clients: tuple[int, ...] = (1, 2, 4, 8, 16)  # clients of the throughput curve
    quick: bool = False  # short runs (a smoke test)
    out: Path = BENCH_DIR  # folder for FLEET.md and fleet.json

    @classmethod
    def make(cls, quick: bool = False) -> FleetConfig:
        if quick:
            return cls(load_s=1.5, rounds=2, block=50, scaling_clients=(1, 4), quick=True)
        return cls()


def _load(url: str, clients: int, seconds: float, **kw: Any) -> dict[str, Any]:
    """``clients`` closed loops (PolicyClient, HTTP) for ``seconds``: rate and latency."""
    from bench.common import summarize_us
    from s2loop_client import PolicyClient

    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    fails = [0] * clients

    def loop(k: int) -> None:
        with PolicyClient(url, "cartpole", timeout_s=10, **kw) as policy:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    policy.act(OBS)
                    lat[k].append((time.perf_counter() - t0) * 1e6)
                except Exception:
                    fails[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    wall = time.perf_counter() - t0
    all_us = [x for part in lat for x in part]
    return {
        "clients": clients,
        "answers": len(all_us),
        "failed": sum(fails),
        "per_s": len(all_us) / wall,
        "latency_us": summarize_us(all_us),
    }


def _interleaved(urls: dict[str, str], rounds: int, block: int) -> dict[str, Any]:
    import orjson

    from bench.common import summarize_us
    from bench.suite import HttpBare

    body = orjson.dumps({"model": "cartpole", "observation": OBS})
    clients = {k: HttpBare(u, "/v1/act") for k, u in urls.items()}
    rtt: dict[str, list[float]] = {k: [] for k in urls}
    names = list(urls)
    for client in clients.values():
        for _ in range(100):
            client.roundtrip(body)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(block):
                rtt[name].append(clients[name].roundtrip(body)[0])
    for client in clients.values():
        client.close()
    return {k: summarize_us(v) for k, v in rtt.items()}


def run_fleet_bench(cfg: FleetConfig, command: str = "", log: Any = print) -> dict[str, Any]:
    """The measurements and the capacity plan drawn from them."""
    report = _measure(cfg, command, log)
    report["capacity"] = capacity(report)
    return report


def _measure(cfg: FleetConfig, command: str, log: Any) -> dict[str, Any]:
    from clients.demo import ServerProcess, shipped_models_dir

    tmp = Path(tempfile.mkdtemp(prefix="s2loop-bench-fleet-"))
    models = shipped_models_dir()
    config = {k: v for k, v in cfg.__dict__.items() if k not in ("quick", "out")}
    report: dict[str, Any] = report_head(command, cfg.quick, config)
    board_env = {"S2LOOP_FAKE_BOARD_RUN_S": str(cfg.board_run_s), "S2LOOP_FAKE_BOARD_TICK_S": "0"}
    old = {k: os.environ.get(k) for k in board_env}
    os.environ.update(board_env)
    try:
        board = ["--backend", "tests.fleet_backends:TimedBoard", "--fallback", "none",
                 "--queue-size", "64", "--deadline-ms", "10000"]  # fmt: skip
        out = {}
        for name, extra in (("coalescing", []), ("no_coalescing", ["--batch-window-ms", "0"])):
            with ServerProcess(models, log_path=tmp / f"{name}.log", extra_args=board + extra) as s:
                s.wait_ready(180)
                out[name] = _load(s.url, cfg.board_clients, cfg.load_s)
            log(f"  board, {name}: {out[name]['per_s']:.0f} answers/s")
        report["board"] = out
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    with (
        ServerProcess(models, log_path=tmp / "emu-off.log") as off,
        ServerProcess(
            models, log_path=tmp / "emu-on.log", extra_args=["--batch-window-ms", "2"]
        ) as on,
    ):
        off.wait_ready(180)
        on.wait_ready(180)
        report["emulator_one_client"] = _interleaved(
            {"off": off.url, "on": on.url}, cfg.rounds, cfg.block
        )
        log("  emulator at one client done")
        report["scaling"] = [_load(off.url, n, cfg.load_s) for n in cfg.scaling_clients]
        log("  replica scaling done")

    haproxy = shutil.which("haproxy")
    if haproxy is None:
        report["lb"] = {"skipped": "haproxy is not installed"}
        return report
    from bench.lb import haproxy_fleet

    replicas = [ServerProcess(models, log_path=tmp / f"r{i}.log") for i in range(3)]
    with haproxy_fleet(haproxy, replicas, tmp) as lb:
        time.sleep(2.0)  # two health checks
        report["lb"] = {"latency": _interleaved(
            {"direct": replicas[0].url, "through_haproxy": lb.url}, cfg.rounds, cfg.block
        )}  # fmt: skip
        log("  load balancer latency done")
        killer = threading.Timer(cfg.load_s / 3, replicas[0].proc.kill)
        killer.start()
        report["lb"]["failover"] = _load(lb.url, 8, cfg.load_s)
        killer.join()
        log(f"  failover: {report['lb']['failover']['failed']} failed")
    return report


def capacity(r: dict[str, Any]) -> dict[str, Any]:
    """The plan's figures, from the measured curves (rules stated in the page)."""
    best = max(r["scaling"], key=lambda x: x["per_s"])
    per_replica = best["per_s"] * 0.7  # 70 % of the best measured rate: latency headroom
    board = r["board"]
    with_c, without_c = board["coalescing"]["per_s"], board["no_coalescing"]["per_s"]
    return {
        "replica_steps_per_s": best["per_s"],
        "replica_best_at_clients": best["clients"],
        "robots_per_replica": {hz: int(per_replica // hz) for hz in (50, 200)},
        "board_answers_per_s": {"coalescing": with_c, "no_coalescing": without_c},
        "boards_for_100_robots_50hz": {
            k: math.ceil(100 * 50 / v) if v else None
            for k, v in (("coalescing", with_c), ("no_coalescing", without_c))
        },
    }


def markdown(r: dict[str, Any]) -> str:
    b = r["board"]
    c, n = b["coalescing"], b["no_coalescing"]
    gain = c["per_s"] / n["per_s"] if n["per_s"] else float("nan")
    emu = r["emulator_one_client"]
    lines = [
        "# Many robots, many boards",
        "",
        f"Written by `{r['command']}` on {r['date']}, {r['machine']['cpu_model']}, "
        f"{r['machine']['cpus']} CPUs (clients, servers and load balancer share them). All "
        "figures measured by that command, except the board's timing, which is an assumption.",
        "",
    ]
    if r["quick"]:
        lines += ["**Quick mode**: short runs; the figures mean little.", ""]
    lines += [
        "## Coalescing on a board",
        "",
        f"Timing model (`tests/fleet_backends.py:TimedBoard`): every board run costs "
        f"{r['config']['board_run_s'] * 1e3:g} ms whatever it carries, up to 37 copies of the "
        "shipped network (hw.mapping); one run at a time; answers by the emulator. "
        "**Assumptions, not measurements of a board.** "
        f"{r['config']['board_clients']} closed-loop clients, {r['config']['load_s']:g} s each.",
        "",
        *table(
            ["", "answers/s", "p50 µs", "p99 µs", "failed"],
            [
                [
                    what,
                    fmt(x["per_s"]),
                    fmt(x["latency_us"]["p50"]),
                    fmt(x["latency_us"]["p99"]),
                    fmt(x["failed"]),
                ]
                for what, x in (("coalescing (2 ms window)", c), ("one run per request", n))
            ],
        ),
        "",
        f"Throughput with coalescing: **{gain:.1f}x** (target >= 10x); p99 "
        f"{'lower' if c['latency_us']['p99'] < n['latency_us']['p99'] else 'NOT lower'} with "
        "coalescing. A request waits for a whole board run at least: with runs of "
        f"{r['config']['board_run_s'] * 1e3:g} ms no answer comes within a 50 Hz period (20 ms); "
        "a board closes 50 Hz loops only with runs well under 20 ms.",
        "",
        "## Coalescing on the emulator, one client",
        "",
        f"p50 {fmt(emu['on']['p50'])} µs with a 2 ms window forced on, {fmt(emu['off']['p50'])} µs "
        "with it off (the default for the emulator: one emulator call runs one copy, so the "
        "coalescer passes requests straight through).",
        "",
    ]
    lb = r["lb"]
    if "skipped" in lb:
        lines += [f"## Load balancer: skipped ({lb['skipped']})", ""]
    else:
        lat, fo = lb["latency"], lb["failover"]
        extra = lat["through_haproxy"]["p50"] - lat["direct"]["p50"]
        lines += [
            "## HAProxy in front of 3 replicas",
            "",
            f"One client, interleaved: p50 {fmt(lat['direct']['p50'])} µs straight to a replica, "
            f"{fmt(lat['through_haproxy']['p50'])} µs through HAProxy (+{fmt(extra)} µs; target "
            f"<= +150 µs). 8 clients for {r['config']['load_s']:g} s with one replica killed "
            f"(SIGKILL) a third of the way in: {fo['answers']:,} answers, **{fo['failed']} "
            "failed**.",
            "",
        ]
    cap = capacity(r)
    rows = [[fmt(s["clients"]), fmt(s["per_s"]), fmt(s["latency_us"]["p50"]),
             fmt(s["latency_us"]["p99"])] for s in r["scaling"]]  # fmt: skip
    lines += [
        "## Capacity plan",
        "",
        "One emulator replica (one server process) against closed-loop clients on the same "
        "machine:",
        "",
        *table(["clients", "answers/s", "p50 µs", "p99 µs"], rows),
        "",
        f"- **Robots per replica**: planned at 70% of the best rate measured "
        f"({fmt(cap['replica_steps_per_s'])} answers/s at {cap['replica_best_at_clients']} "
        f"clients): {cap['robots_per_replica'][50]} robots at 50 Hz, "
        f"{cap['robots_per_replica'][200]} at 200 Hz.",
        "- **Replicas per node**: a replica is one process with one event loop; the emulator "
        "runs on it for single observations: plan one CPU core per replica (the Deployment "
        "requests 1 CPU) and leave a core for the node.",
        f"- **Boards for 100 robots at 50 Hz** (the timing model above): "
        f"{cap['boards_for_100_robots_50hz']['coalescing']} with coalescing, "
        f"{cap['boards_for_100_robots_50hz']['no_coalescing']} without (throughput only; the "
        "latency caveat above applies).",
        "- **What saturates first**: on the emulator, the replica's CPU core (its event loop) "
        "while its clients' round trips are mostly HTTP; on a board, the board's run rate: one "
        "run at a time, so coalescing is what multiplies its capacity.",
        "",
    ]
    return "\n".join(lines)
