"""The server's control plane, for tools around a control loop: wait until it is ready,
list what it serves. (Acting goes through :class:`~s2loop_client.PolicyClient`.)"""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx

from s2loop_client import contract as wire


def tls(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx's ``verify``: True, False, or a context trusting the CA file ``verify``."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


class ServerNotReady(RuntimeError):
    """The server did not answer ``/readyz`` with 200 in time (the message says why)."""


def base_url(url: str) -> str:
    """``url`` without a trailing slash; ``host:port`` alone means ``http://host:port``."""
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0]
    if scheme not in ("http", "https") or not url.split("://", 1)[1].strip("/"):
        raise ValueError(f"a server URL looks like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def wait_ready(
    url: str, timeout_s: float = 10.0, poll_s: float = 0.2, verify: bool | str = True
) -> dict[str, Any]:
    """Poll ``GET /readyz`` until 200; its body. :class:`ServerNotReady` says whether
    nothing answered at ``url`` or the server answered but was not ready, and why."""
    url = base_url(url)
    deadline = time.monotonic() + timeout_s
    last, answered = "no attempt made", False
    with httpx.Client(base_url=url, timeout=min(2.0, max(timeout_s, 0.1)), verify=tls(verify)) as c:
        while True:
            try:
                r = c.get("/readyz")
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                answered = True
                if r.status_code == 200:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:300]}"
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
    if answered:
        raise ServerNotReady(f"server at {url} is not ready after {timeout_s:g}s ({last})")
    raise ServerNotReady(
        f"no s2loop server answers at {url} ({last}); start one with `s2loop serve` or point "
        "the URL at a running one"
    )


def list_models(
    url: str, api_key: str | None = None, timeout_s: float = 5.0, verify: bool | str = True
) -> list[dict[str, Any]]:
    """``GET /v1/models``: one description per served model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    r = httpx.get(
        base_url(url) + wire.MODELS_PATH, headers=headers, timeout=timeout_s, verify=tls(verify)
    )
    if r.status_code != 200:
        from s2loop_client.errors import from_error_body

        raise from_error_body(r.json(), r.status_code)
    return list(r.json()["models"])
