"""What the routes call: the :class:`Service`, which starts the backends (each a
:class:`Lane`) and routes each inference; its parts each do one job: the models
(:class:`~service.registry.ModelRegistry`, warm-up states as
:class:`~service.registry.WarmUp`), warming them up (:class:`~service.warmup.WarmUps`),
the primary's :class:`~service.breaker.Breaker`, /readyz
(:func:`~service.readiness.readiness`) and hot reload (:class:`~service.reload.Reloader`).

Who answers a request: the primary backend; the fallback (the emulator) when the
primary failed or timed out (and, for ``primary_retry_s`` after, without asking the
primary), and when the primary's queue is full: for a robot, a marked fallback
answer beats no answer. 429 only when nothing can take the request. Nothing is
answered after the request's deadline, which runs from its arrival: 504 instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hw.artifact import SUFFIX, ArtifactError, load_artifact
from hw.backend import InferenceResult, create_backend
from service.breaker import Breaker
from service.coalesce import Coalescer
from service.errors import ApiError
from service.lane import Lane, LaneTimeout, QueueFull
from service.metrics import Metrics
from service.readiness import readiness
from service.registry import PENDING, WARM, ModelEntry, ModelRegistry, WarmState, WarmUp
from service.reload import Reloader
from service.settings import DEFAULT_BATCH_WINDOW_MS, Settings
from service.warmup import WarmUps

__all__ = ["ModelEntry", "Service"]

logger = logging.getLogger("s2loop.service")


class Service:
    """The backends and the routing of inferences over them; one per app instance."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.primary: Lane | None = None
        self.coalescer: Coalescer | None = None  # batches the primary's single requests
        self.fallback: Lane | None = None
        self.primary_error: str | None = None  # why the primary could not start
        self.deadline_s = settings.deadline_ms / 1e3
        self.primary_timeout_s = settings.primary_timeout_s
        self._fresh_parts()
        self.started_at = time.time()

    def _fresh_parts(self) -> None:
        s = self.settings
        self.registry = ModelRegistry(Path(s.models))
        self.breaker = Breaker(s.primary_retry_s)
        self.warmups = WarmUps(self.registry, on_primary_failure=self.breaker.open)
        self.reloader = Reloader(
            self.registry,
            self.metrics,
            s.sys_tick_in_s,
            self.lanes,
            lambda name: self.warmups.schedule(name, self.lanes()),
        )

    @property
    def entries(self) -> dict[str, ModelEntry]:
        return self.registry.entries

    def entry(self, name: str) -> ModelEntry:
        return self.registry.entry(name)

    # ------------------------------------------------------------------ lifecycle

    def lanes(self) -> list[Lane]:
        return [lane for lane in (self.primary, self.fallback) if lane is not None]

    async def start(self) -> None:
        s = self.settings
        if self.lanes():  # a second lifespan on the same app: start afresh
            await self.stop()
        self._fresh_parts()
        self.primary = self.fallback = None
        self.coalescer = None
        self.primary_error = None
        try:
            backend = await asyncio.to_thread(
                create_backend, s.backend_spec(), **s.backend_kwargs()
            )
            self.primary = Lane("primary", backend, s)
            window_ms = s.batch_window_ms
            if window_ms is None:  # on where one call runs several copies (the board)
                window_ms = 0.0 if backend.inline_safe else DEFAULT_BATCH_WINDOW_MS
            if window_ms > 0:
                self.coalescer = Coalescer(self.primary, window_ms / 1e3, self.metrics)
        except Exception as exc:
            self.primary_error = f"{type(exc).__name__}: {exc}"
            if not s.has_fallback:
                raise RuntimeError(
                    f"cannot start backend {s.backend!r} and no fallback is configured: "
                    f"{self.primary_error}"
                ) from exc
            logger.error(
                "primary backend unavailable, serving from the fallback",
                extra={"backend": s.backend, "error": self.primary_error},
            )
        if s.has_fallback:
            self.fallback = Lane("fallback", create_backend("emulator"), s)
        for lane in self.lanes():
            self.metrics.track_queue(lane.role, lambda lane=lane: lane.pending)

        models_dir = Path(s.models)
        paths = sorted(models_dir.glob(f"*{SUFFIX}")) if models_dir.is_dir() else []
        if not paths:
            logger.warning("no model artifacts found", extra={"models_dir": str(models_dir)})
        for path in paths:
            await self._load_at_start(path)
        for name in list(self.registry.entries):
            self.warmups.schedule(name, self.lanes())
        logger.info(
            "service started",
            extra={
                "backend": s.backend,
                "fallback": self.fallback.name if self.fallback else None,
                "models": sorted(self.registry.entries),
                "load_errors": self.registry.load_errors,
            },
        )

    async def _load_at_start(self, path: Path) -> None:
        errors = self.registry.load_errors
        try:
            art = await asyncio.to_thread(load_artifact, path)
        except ArtifactError as exc:
            errors[path.name] = str(exc)
            logger.error("cannot load model artifact", extra={"path": str(path), "error": str(exc)})
            return
        if art.name in self.registry.entries:
            msg = f"model name {art.name!r} already loaded from {self.entries[art.name].path}"
            errors[path.name] = msg
            logger.error("duplicate model name", extra={"path": str(path), "error": msg})
            return
        states: dict[str, WarmState] = {}
        for lane in self.lanes():
            try:
                await lane.call(lane.backend.load, art)
                states[lane.role] = PENDING
            except Exception as exc:
                states[lane.role] = WarmState(WarmUp.FAILED, f"load: {type(exc).__name__}: {exc}")
                logger.error(
                    "backend cannot load model",
                    extra={"model": art.name, "role": lane.role, "error": str(exc)},
                )
        if PENDING not in states.values():
            errors[path.name] = "; ".join(f"{k}: {v}" for k, v in states.items())
            return
        self.registry.add(ModelEntry.make(art, path, self.settings.sys_tick_in_s), states)

    async def stop(self) -> None:
        self.warmups.cancel()
        for lane in self.lanes():
            lane.close()

    # ------------------------------------------------------------------ inference

    def _deadline_error(self) -> ApiError:
        msg = f"no answer within the deadline of {self.settings.deadline_ms:g} ms"
        return ApiError(504, "deadline", msg)

    async def infer(
        self,
        entry: ModelEntry,
        obs: np.ndarray,
        arrived: float,
        request_id: str | None = None,
        seeds: np.ndarray | None = None,
        trace: bool = False,
    ) -> tuple[InferenceResult, bool]:
        """Run ``obs`` through the primary, else the fallback; returns (result, fallback).

        ``arrived``: when the request arrived (perf_counter); nothing is answered after
        ``arrived + deadline``. ``seeds``: Poisson encoder seeds, one per observation,
        or None for fresh draws. ``trace``: the result carries spike traces (a traced
        request is never coalesced; a backend without traces is skipped like one
        without the model)."""
        deadline = arrived + self.deadline_s
        if time.perf_counter() >= deadline:  # it waited its whole deadline already
            raise self._deadline_error()
        primary, fallback = self.primary, self.fallback
        can_fall_back = (
            fallback is not None
            and fallback.has(entry.name)
            and (not trace or fallback.backend.gives_traces)
        )
        reason = "primary_unavailable"
        if (
            primary is not None
            and primary.has(entry.name)
            and (not trace or primary.backend.gives_traces)
            and self.breaker.lets_primary_try(can_fall_back)
        ):
            budget = min(arrived + self.primary_timeout_s, deadline) - time.perf_counter()
            try:
                if self.coalescer is not None and obs.shape[0] == 1 and not trace:
                    res = await self.coalescer.run(entry.name, obs, budget, seeds)
                elif obs.shape[0] <= primary.inline_max_batch:  # the emulator: no coroutine
                    res = primary.run_inline(entry.name, obs, seeds, trace)
                else:
                    res = await primary.run(entry.name, obs, budget, seeds, trace)
            except QueueFull as full:
                if not can_fall_back:
                    raise self._busy(primary, full) from None
                reason = "overflow"  # the primary is fine, only busy: no breaker
            except LaneTimeout:
                reason = "timeout"
                self._primary_failed(entry, request_id, "timed out", None)
            except Exception as exc:
                reason = "error"
                self._primary_failed(entry, request_id, "failed", exc)
            else:
                if time.perf_counter() > deadline:
                    raise self._deadline_error()
                self.metrics.observe_backend(
                    entry.name, res.backend, res.compute_us * 1e-6, obs.shape[0]
                )
                self.breaker.close()
                # WARM is one object (marking again is harmless): `is`, not a dataclass ==
                if self.registry.state(entry.name, "primary") is not WARM:
                    self.registry.mark(entry.name, "primary", WARM)  # a real answer warms up
                return res, False
        if not can_fall_back:
            if reason == "timeout":
                raise self._deadline_error()
            detail = self.breaker.reason or self.primary_error or "backend unavailable"
            raise ApiError(503, "backend_error", f"no backend could answer: {detail}")
        assert fallback is not None
        try:
            res = await fallback.run(entry.name, obs, deadline - time.perf_counter(), seeds, trace)
        except QueueFull as full:
            raise self._busy(fallback, full) from None
        except LaneTimeout:
            raise self._deadline_error() from None
        except Exception as exc:
            msg = f"fallback backend failed: {type(exc).__name__}: {exc}"
            raise ApiError(503, "backend_error", msg) from None
        if time.perf_counter() > deadline:
            raise self._deadline_error()
        self.metrics.observe_backend(entry.name, res.backend, res.compute_us * 1e-6, len(res))
        self.metrics.fallbacks.labels(entry.name, reason).inc()
        return res, True

    def _busy(self, lane: Lane, full: QueueFull) -> ApiError:
        return ApiError(
            429,
            "queue_full",
            f"backend {lane.name!r} is busy: {lane.pending} calls in flight or waiting",
            retry_after_s=full.retry_after_s,
        )

    def _primary_failed(
        self, entry: ModelEntry, request_id: str | None, what: str, exc: Exception | None
    ) -> None:
        msg = f"primary {what}" + (f": {type(exc).__name__}: {exc}" if exc else "")
        if exc is None:
            msg += f" after {self.primary_timeout_s:.3f} s"
        self.breaker.open(msg)
        extra = {"request_id": request_id, "model": entry.name, "error": msg}
        logger.warning(f"primary backend {what}", extra=extra)

    # ------------------------------------------------------------------ readiness, reload

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) for /readyz."""
        fallback = self.fallback.name if self.fallback else None
        return readiness(self.settings, self.registry, self.breaker, self.primary_error, fallback)

    async def reload(self, name: str) -> dict[str, Any]:
        """Load ``name`` again from its file and swap it in on every backend, or raise
        ApiError and leave the old model serving."""
        return await self.reloader.reload(name)
