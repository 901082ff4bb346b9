"""HAProxy for local replicas: ``deploy/haproxy/haproxy.cfg`` (the compose deployment's
file, one declaration of the balancing policy) with local ports in place of Docker's DNS
names, and its stats page read as server states. Used by the fleet bench and tests."""

from __future__ import annotations

import re
from pathlib import Path

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
