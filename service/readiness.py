"""/readyz: ready, degraded (serving, with reasons) or not ready, from the registry's
models and warm-up states, the primary's start error and the breaker."""

from __future__ import annotations

from typing import Any

from service.breaker import Breaker
from service.registry import ModelRegistry, WarmUp
from service.settings import Settings


def readiness(
    settings: Settings,
    registry: ModelRegistry,
    breaker: Breaker,
    primary_error: str | None,
    fallback_name: str | None,
) -> tuple[int, dict[str, Any]]:
    """(status code, body) for /readyz."""
    reasons: list[str] = []
    status = "ready"
    if not registry.entries:
        status = "not_ready"
        reasons.append(f"no models loaded from {settings.models}")
    if primary_error:
        reasons.append(f"primary backend {settings.backend!r}: {primary_error}")
    if breaker.is_open:
        reasons.append(f"primary backend degraded: {breaker.reason}")
    for name, states in sorted(registry.warm.items()):
        p, f = states.get("primary"), states.get("fallback")
        if p is not None and p.state is WarmUp.WARM:
            continue
        if p is None or p.state is WarmUp.FAILED:
            if f is not None and f.state is WarmUp.WARM:
                reasons.append(f"model {name!r}: primary {p or 'missing'}; fallback serves")
                continue
            status = "not_ready"
            reasons.append(f"model {name!r}: primary {p or 'missing'}, fallback {f}")
        else:
            status = "not_ready"
            reasons.append(f"model {name!r}: warm-up on the primary is {p}")
    if status == "ready" and reasons:
        status = "degraded"
    code = {"ready": 200, "degraded": settings.degraded_status}.get(status, 503)
    body = {
        "status": status,
        "reasons": reasons,
        "backend": settings.backend,
        "fallback": fallback_name,
        "models": registry.report(),
        "load_errors": registry.load_errors,
    }
    return code, body
