"""Warm-up: one inference per model on each backend it is pending on, before /readyz
says ready (a board's first run programs it; a JIT compiles). Inline-safe backends warm
up at once; the others on their lane's thread, as tasks."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable

import numpy as np

from hw.artifact import ModelArtifact
from service.lane import Lane
from service.registry import WARM, ModelRegistry, WarmState, WarmUp

logger = logging.getLogger("s2loop.service")


def _warm(backend, name: str, artifact: ModelArtifact) -> None:
    """One inference, and one traced where the backend gives traces (their compiled
    code is built on first use, which must not happen inside a request's deadline)."""
    backend.infer(name, _warmup_observation(artifact))
    traced = "trace" in inspect.signature(backend.infer).parameters
    if getattr(backend, "gives_traces", False) and traced:
        backend.infer(name, _warmup_observation(artifact), trace=True)


def _warmup_observation(artifact: ModelArtifact) -> np.ndarray:
    return np.asarray(artifact.obs_offset, dtype=np.float32).reshape(1, -1).copy()


class WarmUps:
    """Runs warm-ups and records their outcome in the registry; ``on_primary_failure``
    hears why the primary's failed (the service opens its breaker)."""

    def __init__(self, registry: ModelRegistry, on_primary_failure: Callable[[str], None]):
        self.registry = registry
        self.on_primary_failure = on_primary_failure
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, name: str, lanes: list[Lane]) -> None:
        for lane in lanes:
            state = self.registry.state(name, lane.role)
            if state is None or state.state is not WarmUp.PENDING:
                continue
            if lane.inline_safe:
                self._inline(name, lane)
            else:
                task = asyncio.get_running_loop().create_task(self._in_lane(name, lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _inline(self, name: str, lane: Lane) -> None:
        art = self.registry.entries[name].artifact
        try:
            _warm(lane.backend, name, art)
            self.registry.mark(name, lane.role, WARM)
        except Exception as exc:
            self._failed(name, lane, exc)

    async def _in_lane(self, name: str, lane: Lane) -> None:
        art = self.registry.entries[name].artifact
        try:
            await lane.call(_warm, lane.backend, name, art)
            self.registry.mark(name, lane.role, WARM)
        except Exception as exc:
            self._failed(name, lane, exc)

    def _failed(self, name: str, lane: Lane, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.registry.mark(name, lane.role, WarmState(WarmUp.FAILED, f"warm-up: {msg}"))
        logger.error(
            "warm-up inference failed", extra={"model": name, "role": lane.role, "error": msg}
        )
        if lane.role == "primary":
            self.on_primary_failure(f"warm-up of {name!r} failed: {msg}")

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
