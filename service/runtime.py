"""What the routes call: the served models, the backends (each a :class:`Lane`), the
fallback, warm-up state and hot reload.

Who answers a request: the primary backend; the fallback (the emulator) when the
primary failed or timed out (and, for ``primary_retry_s`` after, without asking the
primary), and when the primary's queue is full: for a robot, a marked fallback
answer beats no answer. 429 only when nothing can take the request. Nothing is
answered after the request's deadline, which runs from its arrival: 504 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw.artifact import SUFFIX, ArtifactError, ModelArtifact, load_artifact
from hw.backend import InferenceResult, create_backend
from hw.mapping import ChipSpec, MappingError, MappingReport, map_network
from service.coalesce import Coalescer
from service.errors import ApiError
from service.lane import Lane, LaneTimeout, QueueFull
from service.metrics import Metrics
from service.settings import DEFAULT_BATCH_WINDOW_MS, Settings

logger = logging.getLogger("s2loop.service")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


@dataclass
class ModelEntry:
    """A served model: the artifact and what the routes need, fixed at load time."""

    name: str
    artifact: ModelArtifact
    path: Path
    mapping: MappingReport | None
    mapping_error: str | None
    loaded_at: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        art = self.artifact
        self.observation_size = art.observation_size
        self.ticks = art.ticks
        self.stochastic = art.encoder.kind == "poisson"
        self.chip_time_s = self.mapping.chip_time_s if self.mapping else None
        self.energy_j = self.mapping.energy_j if self.mapping else None
        self.info = {
            **art.summary(),
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "mapping": self.mapping.to_dict() if self.mapping else None,
            "mapping_error": self.mapping_error,
            "model_card": _model_card(art.provenance),
        }

    def estimate(self, batch: int) -> tuple[float | None, float | None]:
        """Estimated chip time and energy of ``batch`` observations (``hw.mapping``)."""
        return self.mapping.estimate(batch) if self.mapping else (None, None)


def _model_card(provenance: dict[str, Any]) -> dict[str, Any]:
    """The figures a model card quotes: an explicit ``model_card`` block, else the
    evaluation and training recipe the agent records in the provenance."""
    card = provenance.get("model_card")
    if isinstance(card, dict):
        return dict(card)
    keys = ("evaluation", "recipe", "teacher", "dsqn", "finetune")
    return {k: provenance[k] for k in keys if k in provenance}


def _map(artifact: ModelArtifact, settings: Settings) -> tuple[MappingReport | None, str | None]:
    try:
        return map_network(artifact, ChipSpec(sys_tick_s=settings.sys_tick_in_s)), None
    except MappingError as exc:
        return None, str(exc)


def _warmup_observation(artifact: ModelArtifact) -> np.ndarray:
    return np.asarray(artifact.obs_offset, dtype=np.float32).reshape(1, -1).copy()


class Service:
    """The served models and the backends; one per app instance."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        self.load_errors: dict[str, str] = {}
        self.primary: Lane | None = None
        self.coalescer: Coalescer | None = None  # batches the primary's single requests
        self.fallback: Lane | None = None
        self.primary_error: str | None = None  # why the primary could not start
        # model -> role -> "pending" | "warm" | "failed: ..."
        self.warm: dict[str, dict[str, str]] = {}
        self.deadline_s = settings.deadline_ms / 1e3
        self.primary_timeout_s = settings.primary_timeout_s
        self._breaker_until = 0.0
        self._breaker_reason: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    def lanes(self) -> list[Lane]:
        return [lane for lane in (self.primary, self.fallback) if lane is not None]

    async def start(self) -> None:
        s = self.settings
        if self.lanes():  # a second lifespan on the same app: start afresh
            await self.stop()
        self.entries, self.warm, self.load_errors = {}, {}, {}
        self.primary = self.fallback = None
        self.coalescer = None
        self.primary_error = None
        self._breaker_until, self._breaker_reason = 0.0, None
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
        for name in list(self.entries):
            self._schedule_warmup(name)
        logger.info(
            "service started",
            extra={
                "backend": s.backend,
                "fallback": self.fallback.name if self.fallback else None,
                "models": sorted(self.entries),
                "load_errors": self.load_errors,
            },
        )

    async def _load_at_start(self, path: Path) -> None:
        try:
            art = await asyncio.to_thread(load_artifact, path)
        except ArtifactError as exc:
            self.load_errors[path.name] = str(exc)
            logger.error("cannot load model artifact", extra={"path": str(path), "error": str(exc)})
            return
        if art.name in self.entries:
            msg = f"model name {art.name!r} already loaded from {self.entries[art.name].path}"
            self.load_errors[path.name] = msg
            logger.error("duplicate model name", extra={"path": str(path), "error": msg})
            return
        states: dict[str, str] = {}
        for lane in self.lanes():
            try:
                await lane.call(lane.backend.load, art)
                states[lane.role] = "pending"
            except Exception as exc:
                states[lane.role] = f"failed: load: {type(exc).__name__}: {exc}"
                logger.error(
                    "backend cannot load model",
                    extra={"model": art.name, "role": lane.role, "error": str(exc)},
                )
        if not any(v == "pending" for v in states.values()):
            self.load_errors[path.name] = "; ".join(f"{k}: {v}" for k, v in states.items())
            return
        mapping, mapping_error = _map(art, self.settings)
        entry = ModelEntry(art.name, art, path, mapping, mapping_error, time.time())
        self.entries[art.name] = entry
        self.warm[art.name] = states

    def _schedule_warmup(self, name: str) -> None:
        for lane in self.lanes():
            if self.warm.get(name, {}).get(lane.role) != "pending":
                continue
            if lane.inline_safe:
                self._warmup_inline(name, lane)
            else:
                task = asyncio.get_running_loop().create_task(self._warmup(name, lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _warmup_inline(self, name: str, lane: Lane) -> None:
        art = self.entries[name].artifact
        try:
            lane.backend.infer(name, _warmup_observation(art))
            self.warm[name][lane.role] = "warm"
        except Exception as exc:
            self._warmup_failed(name, lane, exc)

    async def _warmup(self, name: str, lane: Lane) -> None:
        art = self.entries[name].artifact
        try:
            await lane.call(lane.backend.infer, name, _warmup_observation(art))
            self.warm[name][lane.role] = "warm"
        except Exception as exc:
            self._warmup_failed(name, lane, exc)

    def _warmup_failed(self, name: str, lane: Lane, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.warm[name][lane.role] = f"failed: warm-up: {msg}"
        logger.error(
            "warm-up inference failed", extra={"model": name, "role": lane.role, "error": msg}
        )
        if lane is self.primary:
            self._open_breaker(f"warm-up of {name!r} failed: {msg}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for lane in self.lanes():
            lane.close()

    # ------------------------------------------------------------------ inference

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ApiError(
                404,
                "unknown_model",
                f"no model named {name!r}; served models: {sorted(self.entries)}",
            )
        return entry

    def _open_breaker(self, reason: str) -> None:
        self._breaker_until = time.monotonic() + self.settings.primary_retry_s
        self._breaker_reason = reason

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
            and (
                self._breaker_until == 0.0  # the usual case: no recent failure
                or not can_fall_back  # nobody else to ask
                or time.monotonic() >= self._breaker_until  # time to try the primary again
            )
        ):
            budget = min(arrived + self.primary_timeout_s, deadline) - time.perf_counter()
            try:
                if self.coalescer is not None and obs.shape[0] == 1 and not trace:
                    res = await self.coalescer.run(entry.name, obs, budget, seeds)
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
                    entry.name, res.backend, res.compute_us * 1e-6, len(res)
                )
                if self._breaker_until:
                    self._breaker_until, self._breaker_reason = 0.0, None
                states = self.warm[entry.name]
                if states.get("primary") != "warm":  # a real answer counts as warm-up
                    states["primary"] = "warm"
                return res, False
        if not can_fall_back:
            if reason == "timeout":
                raise self._deadline_error()
            detail = self._breaker_reason or self.primary_error or "backend unavailable"
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
        self._open_breaker(msg)
        extra = {"request_id": request_id, "model": entry.name, "error": msg}
        logger.warning(f"primary backend {what}", extra=extra)

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) for /readyz."""
        reasons: list[str] = []
        status = "ready"
        if not self.entries:
            status = "not_ready"
            reasons.append(f"no models loaded from {self.settings.models}")
        if self.primary_error:
            reasons.append(f"primary backend {self.settings.backend!r}: {self.primary_error}")
        breaker_open = self._breaker_until and time.monotonic() < self._breaker_until
        if breaker_open:
            reasons.append(f"primary backend degraded: {self._breaker_reason}")
        for name, states in sorted(self.warm.items()):
            p = states.get("primary")
            f = states.get("fallback")
            if p == "warm":
                continue
            if p is None or p.startswith("failed"):
                if f == "warm":
                    reasons.append(f"model {name!r}: primary {p or 'missing'}; fallback serves")
                    continue
                status = "not_ready"
                reasons.append(f"model {name!r}: primary {p or 'missing'}, fallback {f}")
            else:
                status = "not_ready"
                reasons.append(f"model {name!r}: warm-up on the primary is {p}")
        if status == "ready" and reasons:
            status = "degraded"
        code = {"ready": 200, "degraded": self.settings.degraded_status}.get(status, 503)
        body = {
            "status": status,
            "reasons": reasons,
            "backend": self.settings.backend,
            "fallback": self.fallback.name if self.fallback else None,
            "models": self.warm,
            "load_errors": self.load_errors,
        }
        return code, body

    # ------------------------------------------------------------------ reload

    async def reload(self, name: str) -> dict[str, Any]:
        """Load ``name`` again from its file and swap it in on every backend, or raise
        ApiError and leave the old model serving."""
        async with self._reload_lock:
            old = self.entries.get(name)
            if old is not None:
                path = old.path
            else:
                path = Path(self.settings.models) / f"{name}{SUFFIX}"
                if not _SAFE_NAME.fullmatch(name) or not path.is_file():
                    raise ApiError(404, "unknown_model", f"no model named {name!r} to reload")
            try:
                art = await asyncio.to_thread(load_artifact, path)
            except ArtifactError as exc:
                self.metrics.reloads.labels("bad_artifact").inc()
                raise ApiError(
                    422,
                    "bad_artifact",
                    f"{exc}; the previous model keeps serving"
                    if old
                    else f"{exc}; nothing was loaded",
                ) from None
            if art.name != name:
                self.metrics.reloads.labels("bad_artifact").inc()
                raise ApiError(
                    422,
                    "bad_artifact",
                    f"{path} holds a model named {art.name!r}, not {name!r}",
                )
            done: list[Lane] = []
            try:
                for lane in self.lanes():
                    await lane.call(lane.backend.load, art)
                    done.append(lane)
            except Exception as exc:
                for lane in done:  # put the old one back where the new one went in
                    with contextlib.suppress(Exception):
                        if old is not None:
                            await lane.call(lane.backend.load, old.artifact)
                        else:
                            lane.backend.unload(name)
                self.metrics.reloads.labels("backend_error").inc()
                raise ApiError(
                    503,
                    "backend_error",
                    f"backend cannot load {path}: {type(exc).__name__}: {exc}; "
                    + ("the previous model keeps serving" if old else "nothing was loaded"),
                ) from None
            mapping, mapping_error = _map(art, self.settings)
            entry = ModelEntry(name, art, path, mapping, mapping_error, time.time())
            self.warm[name] = {lane.role: "pending" for lane in self.lanes()}
            self.entries[name] = entry
            self._schedule_warmup(name)
            self.metrics.reloads.labels("ok").inc()
            logger.info(
                "model reloaded",
                extra={"model": name, "sha256": art.sha256, "path": str(path)},
            )
            return {
                "model": name,
                "reloaded": True,
                "sha256": art.sha256,
                "previous_sha256": old.artifact.sha256 if old else None,
                "path": str(path),
            }
