"""The TCP door against its floor, in one run (issue 21): a bare socket and the SDK's
``PolicyClient`` on ``s2loop serve --tcp-bind``, and a bare socket on the framed echo
floor (``/work/shared/floors/tcp_echo.py``: a uvloop server that reads the same frames
and answers one constant act-sized msgpack map), in interleaved blocks so that a busy
machine slows each alike. The bench suite's own clients (``TcpBare``, ``SdkTcp``).

Run: ``s2loop bench tcp-floor [--floor PATH] [--rounds 20] [--block 500]`` (or
``python -m bench.tcp_floor``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from bench.suite import SdkTcp, TcpBare, env_observations, summarize_us
from clients.demo import ServerProcess, free_port
from hw.artifact import default_models_dir

SHARED_FLOOR = Path("/work/shared/floors/tcp_echo.py")


def measure(floor: Path, rounds: int, block: int, log: Any = print) -> dict[str, Any]:
    port, tcp = free_port(), free_port()
    echo = subprocess.Popen([sys.executable, str(floor), str(port)])
    server = ServerProcess(default_models_dir(), extra_args=["--tcp-bind", f"127.0.0.1:{tcp}"])
    try:
        server.start().wait_ready(120)
        for _ in range(100):  # the echo floor has no readiness probe: until it accepts
            try:
                TcpBare(f"tcp://127.0.0.1:{port}").close()
                break
            except OSError:
                time.sleep(0.05)
        pool = env_observations("CartPole-v1", 512, 0)
        bodies = [msgpack.packb({"model": "cartpole", "observation": o.tolist()}) for o in pool]
        clients = {
            "floor_echo": TcpBare(f"tcp://127.0.0.1:{port}"),
            "act_tcp": TcpBare(f"tcp://127.0.0.1:{tcp}"),
            "sdk_tcp": SdkTcp(f"tcp://127.0.0.1:{tcp}"),
        }
        rtt: dict[str, list[float]] = {k: [] for k in clients}
        server_us: list[float] = []
        j = 0
        for r in range(rounds + 1):  # round 0 warms up, not kept
            names = list(clients)
            k = r % len(names)
            for name in names[k:] + names[:k]:
                client = clients[name]
                for _ in range(block):
                    body = pool[j % len(pool)] if name == "sdk_tcp" else bodies[j % len(bodies)]
                    us, data = client.roundtrip(body)
                    j += 1
                    if r:
                        rtt[name].append(us)
                        if name == "act_tcp":
                            server_us.append(msgpack.unpackb(data)["timing"]["server_us"])
        for client in clients.values():
            client.close()
    finally:
        server.stop()
        echo.terminate()
        echo.wait(5)
    stats = {name: summarize_us(v) for name, v in rtt.items()}
    floor_p50 = stats["floor_echo"]["p50"]
    return {
        "floor": str(floor),
        "rounds": rounds,
        "block": block,
        "rtt_us": stats,
        "server_us_p50": float(np.median(server_us)),
        "ratio_p50": {k: stats[k]["p50"] / floor_p50 for k in ("act_tcp", "sdk_tcp")},
        "targets": {"act_tcp": 2.5, "sdk_tcp": 3.0},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", type=Path, default=SHARED_FLOOR)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=500)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.floor, args.rounds, args.block), indent=1))


if __name__ == "__main__":
    main()
