"""HAProxy for local replicas: ``deploy/haproxy/haproxy.cfg`` (the compose deployment's
file, one declaration of the balancing policy) with local ports in place of Docker's DNS
names, its stats page read as server states, and replicas started behind it. Used by the
fleet bench and tests."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"


def lb_config(ports: list[int]) -> str:
    servers = "\n".join(
        f"    server replica{i} 127.0.0.1:{p} check" for i, p in enumerate(ports, 1)
    )
    text = re.sub(r"^    server-template .*$", servers, CONFIG.read_text(), flags=re.M)
    return re.sub(r"^resolvers docker\n(    .*\n)+", "", text, flags=re.M)


def lb_status(stats_url: str) -> dict[str, str]:
    """Server name -> UP / DOWN / ... from HAProxy's stats page (CSV)."""
    rows = httpx.get(stats_url + ";csv", timeout=2).text.splitlines()
    header = rows[0].lstrip("# ").split(",")
    out = {}
    for line in rows[1:]:
        cells = dict(zip(header, line.split(","), strict=False))
        if cells.get("pxname") == "replicas" and cells.get("svname", "").startswith("replica"):
            out[cells["svname"]] = cells["status"]
    return out


@dataclass
class Fleet:
    """Replicas started behind a local HAProxy: its URL and its stats page."""

    url: str
    stats: str
    replicas: list[Any]


@contextlib.contextmanager
def haproxy_fleet(haproxy: str, replicas: list[Any], tmp: Path) -> Iterator[Fleet]:
    """Start ``replicas`` (``clients.demo.ServerProcess``), wait until each is ready, put
    ``haproxy`` in front with the deployment's config (log in TMP/haproxy.log); stop all
    on exit. Whether HAProxy sees them UP yet is the caller's to wait for."""
    from clients.demo import free_port

    lb_port, stats_port = free_port(), free_port()
    (tmp / "haproxy.cfg").write_text(lb_config([r.port for r in replicas]))
    env = dict(os.environ, S2LOOP_LB_BIND=f"127.0.0.1:{lb_port}",
               S2LOOP_LB_STATS_BIND=f"127.0.0.1:{stats_port}")  # fmt: skip
    lb = None
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready(180)
        with (tmp / "haproxy.log").open("wb") as log:
            lb = subprocess.Popen(
                [haproxy, "-db", "-f", str(tmp / "haproxy.cfg")], env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        yield Fleet(f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{stats_port}/stats", replicas)
    finally:
        if lb is not None:
            lb.terminate()
            lb.wait(10)
        for r in replicas:
            r.stop()
