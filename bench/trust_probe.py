"""Probes of issue 19 against a real ``s2loop serve`` (one process each run), as an
attacker and an operator would: not timed tests, measurements.

- ``crash``: pipelined batches over TCP into a server with a small recorder queue and
  rotation, every answer read, ``/metrics`` scraped, then SIGKILL; rows answered,
  written (readable ``*.parquet`` after the kill), counted as dropped, and lost
  uncounted, against the README's bound ``record_queue_rows + record_rotate_rows``.
- ``flood``: a burst of connections that never say hello, with keys on: how long each
  connect took (listen backlog), a new client's act latency during the flood, and how
  long until every flood connection was closed (``tcp_hello_timeout_s``).

Run: ``python -m bench.trust_probe crash --runs 5`` / ``python -m bench.trust_probe flood``.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from clients.demo import ServerProcess, free_port
from hw.artifact import default_models_dir
from s2loop_client import PolicyClient, framing
from s2loop_client.codec import pack, unpack

OBS = [0.01, -0.2, 0.03, 0.25]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


def crash_run(batches: int, rows: int, queue_rows: int, rotate_rows: int) -> dict:
    import pyarrow.parquet as pq

    rec = Path(tempfile.mkdtemp(prefix="s2loop-crash-"))
    tcp = free_port("127.0.0.1")
    extra = ["--tcp-bind", f"127.0.0.1:{tcp}", "--record-dir", str(rec),
             "--record-queue-rows", str(queue_rows), "--record-rotate-rows", str(rotate_rows),
             "--deadline-ms", "60000", "--max-batch", str(rows)]  # fmt: skip
    srv = ServerProcess(default_models_dir(), extra_args=extra).start()
    try:
        srv.wait_ready(120)
        obs = np.tile(np.float32(OBS), (rows, 1))
        frame = framing.frame(pack({"model": "cartpole", "observations": obs}))
        with socket.create_connection(("127.0.0.1", tcp), timeout=60) as s:
            sender = threading.Thread(target=lambda: s.sendall(frame * batches))
            sender.start()  # pipelined: all frames go out while answers come back
            buf, answered = bytearray(), 0
            for _ in range(batches):
                answer = unpack(framing.read_frame(s, buf))
                assert "error" not in answer, answer
                answered += len(answer["actions"])
            sender.join()
        text = httpx.get(srv.url + "/metrics").text
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        srv.stop()
    files = sorted(rec.glob("acts-*.parquet"))
    written = sum(pq.read_metadata(f).num_rows for f in files)
    dropped = _metric(text, 's2loop_record_dropped_total{reason="queue_full",table="acts"}')
    lost = answered - written - int(dropped)
    return {"answered": answered, "written": written, "dropped_counted": int(dropped),
            "lost_uncounted": lost, "bound": queue_rows + rotate_rows,
            "within_bound": 0 <= lost <= queue_rows + rotate_rows, "files": len(files)}  # fmt: skip


def flood(connections: int, hello_timeout_s: float, samples: int) -> dict:
    tcp = free_port("127.0.0.1")
    key = "probe-key"
    extra = ["--tcp-bind", f"127.0.0.1:{tcp}", "--api-keys", key,
             "--tcp-hello-timeout-s", str(hello_timeout_s)]  # fmt: skip
    with ServerProcess(default_models_dir(), extra_args=extra) as srv:
        srv.wait_ready(120)
        policy = PolicyClient(f"tcp://127.0.0.1:{tcp}", "cartpole", transport="tcp",
                              api_key=key, timeout_s=5)  # fmt: skip
        policy.act(OBS)  # connected and warm before the flood
        connect_ms, socks = [], []
        t_flood = time.perf_counter()
        for _ in range(connections):
            t = time.perf_counter()
            socks.append(socket.create_connection(("127.0.0.1", tcp), timeout=30))
            connect_ms.append((time.perf_counter() - t) * 1e3)
        during = []
        for _ in range(samples):  # an authenticated client, answered during the flood
            t = time.perf_counter()
            policy.act(OBS)
            during.append((time.perf_counter() - t) * 1e3)
        new_ms = []
        for _ in range(5):  # a new client: connect, hello, act
            t = time.perf_counter()
            with PolicyClient(f"tcp://127.0.0.1:{tcp}", "cartpole", transport="tcp",
                              api_key=key, timeout_s=5) as fresh:  # fmt: skip
                fresh.act(OBS)
            new_ms.append((time.perf_counter() - t) * 1e3)
        closed_after = []
        for s in socks:
            s.settimeout(hello_timeout_s * 4 + 5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
            closed_after.append(time.perf_counter() - t_flood)
            s.close()
        text = httpx.get(srv.url + "/metrics").text
        policy.close()
    return {
        "connections": connections,
        "connect_ms": {"p50": float(np.median(connect_ms)), "max": float(np.max(connect_ms)),
                       "over_100ms": int(sum(m > 100 for m in connect_ms))},
        "act_during_flood_ms": {"p50": float(np.median(during)), "max": float(np.max(during))},
        "new_client_connect_hello_act_ms": {"p50": float(np.median(new_ms)),
                                            "max": float(np.max(new_ms))},
        "all_flood_closed_after_s": float(max(closed_after)),
        "hello_timeout_s": hello_timeout_s,
        "counted_hello_timeout": _metric(text, 's2loop_tcp_closed_total{reason="hello_timeout"}'),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    c = sub.add_parser("crash")
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--batches", type=int, default=40)
    c.add_argument("--rows", type=int, default=4096)
    c.add_argument("--queue-rows", type=int, default=8192)
    c.add_argument("--rotate-rows", type=int, default=100)
    f = sub.add_parser("flood")
    f.add_argument("--connections", type=int, default=200)
    f.add_argument("--hello-timeout-s", type=float, default=5.0)
    f.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.probe == "crash":
        runs = [crash_run(args.batches, args.rows, args.queue_rows, args.rotate_rows)
                for _ in range(args.runs)]  # fmt: skip
        within = sum(r["within_bound"] for r in runs)
        print(json.dumps({"probe": "crash", "runs": runs, "within_bound": within}, indent=1))
    else:
        print(json.dumps({"probe": "flood", **flood(args.connections, args.hello_timeout_s,
                                                     args.samples)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
