"""What the routes call: the served models, the backends behind a bounded queue,
deadlines, the fallback, warm-up state and hot reload.

Execution policy (measured, see the service report): the emulator answers a
single observation in tens of microseconds, less than a hop to a worker thread
costs, so small batches on an *inline-safe* backend run directly on the event
loop (blocking it for one inference). Everything else (large batches, the board,
the torch reference) goes to the backend's worker thread(s) through a bounded
queue: when ``queue_size`` calls already wait, the answer is an immediate 429.
Backends that are not thread-safe (the board runs one network at a time) get one
worker thread, so their calls are serialized.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw.artifact import SUFFIX, ArtifactError, ModelArtifact, load_artifact
from hw.backend import Backend, InferenceResult, create_backend
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger("s2loop.service")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
FLOAT32_MAX = float(np.finfo(np.float32).max)

try:  # hw.mapping may be missing in a partial install; estimates are then null
    from hw.mapping import ChipSpec, MappingError, map_network
except ImportError:  # pragma: no cover - exercised only without hw.mapping
    ChipSpec = MappingError = map_network = None  # type: ignore[assignment,misc]


class ApiError(Exception):
    """An answer other than 200: status, a machine-readable kind and a message for people."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.details = details
        self.headers = headers

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.details:
            err["details"] = self.details
        if request_id:
            err["request_id"] = request_id
        return {"error": err}


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"backend queue is full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class LaneTimeout(Exception):
    pass


class Lane:
    """One backend with its worker thread(s) and bounded queue.

    ``pending`` counts calls handed to the worker threads and not finished
    (running or waiting), including calls whose requester gave up at its
    deadline: the backend is still busy with them."""

    def __init__(self, role: str, backend: Backend, settings: Settings) -> None:
        self.role = role
        self.backend = backend
        name = getattr(backend, "name", "")
        self.inline_safe = bool(getattr(backend, "inline_safe", name == "emulator"))
        thread_safe = bool(getattr(backend, "thread_safe", name == "emulator"))
        self.threads = settings.backend_threads if thread_safe else 1
        self.inline_max_batch = settings.inline_max_batch if self.inline_safe else 0
        self.capacity = self.threads + settings.queue_size
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"s2loop-{role}")
        self._lock = threading.Lock()
        self.pending = 0
        self._service_s: float | None = None  # running mean of a call, for Retry-After

    @property
    def name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    def has(self, model: str) -> bool:
        return model in self.backend._models

    def _call(self, model: str, obs: np.ndarray, seeds: np.ndarray | None) -> InferenceResult:
        start = time.perf_counter()
        try:
            return self.backend.infer(model, obs, seeds)
        finally:
            took = time.perf_counter() - start
            last = self._service_s
            self._service_s = took if last is None else 0.8 * last + 0.2 * took

    def _finished(self, _fut: Any) -> None:
        with self._lock:
            self.pending -= 1

    async def run(
        self, model: str, obs: np.ndarray, timeout_s: float, seeds: np.ndarray | None = None
    ) -> InferenceResult:
        """One backend call; raises QueueFull, LaneTimeout or what the backend raised."""
        if obs.shape[0] <= self.inline_max_batch:
            return self.backend.infer(model, obs, seeds)
        with self._lock:
            if self.pending >= self.capacity:
                waiting = self.pending - self.threads + 1
                per_call = self._service_s or 1.0
                raise QueueFull(max(1, math.ceil(waiting * per_call / self.threads)))
            self.pending += 1
        if timeout_s <= 0:
            with self._lock:
                self.pending -= 1
            raise LaneTimeout
        cfut = self._executor.submit(self._call, model, obs, seeds)
        cfut.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(cfut), timeout_s)
        except TimeoutError:
            cfut.cancel()  # not started yet: it never reaches the backend
            raise LaneTimeout from None

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking maintenance call (load, warm-up) on the lane's own thread(s),
        so it is serialized with inferences on single-threaded backends."""
        with self._lock:
            self.pending += 1
        cfut = self._executor.submit(fn, *args)
        cfut.add_done_callback(self._finished)
        return await asyncio.wrap_future(cfut)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.backend.close()


@dataclass
class ModelEntry:
    """A served model: the artifact and what the routes need, fixed at load time."""

    name: str
    artifact: ModelArtifact
    path: Path
    mapping: Any | None
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
        summary = art.summary()
        self.info = {
            **summary,
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "mapping": self.mapping.to_dict() if self.mapping else None,
            "mapping_error": self.mapping_error,
            "model_card": _model_card(art.provenance),
        }

    def observation(self, values: list[float]) -> np.ndarray:
        """One observation as float32 [1, obs]; ApiError 422 when it does not fit."""
        if len(values) != self.observation_size:
            raise ApiError(
                422,
                "validation_error",
                f"observation has {len(values)} values, model {self.name!r} expects "
                f"{self.observation_size}",
            )
        if max(values) > FLOAT32_MAX or min(values) < -FLOAT32_MAX:
            raise ApiError(
                422,
                "validation_error",
                f"observation values must fit in float32 (|x| <= {FLOAT32_MAX:.4g})",
            )
        return np.array(values, dtype=np.float32).reshape(1, -1)

    def observations(self, rows: list[list[float]], max_batch: int) -> np.ndarray:
        """A batch as float32 [B, obs]; ApiError 422 naming the first row that does not fit."""
        if len(rows) > max_batch:
            raise ApiError(
                422,
                "validation_error",
                f"batch of {len(rows)} observations is larger than max_batch ({max_batch})",
            )
        n = self.observation_size
        for i, row in enumerate(rows):
            if len(row) != n:
                raise ApiError(
                    422,
                    "validation_error",
                    f"observations[{i}] has {len(row)} values, model {self.name!r} expects {n}",
                )
        arr = np.array(rows, dtype=np.float64)
        if np.abs(arr).max() > FLOAT32_MAX:
            raise ApiError(
                422,
                "validation_error",
                f"observation values must fit in float32 (|x| <= {FLOAT32_MAX:.4g})",
            )
        return arr.astype(np.float32)

    def seeds(self, seeds: list[int] | None, n: int) -> np.ndarray | None:
        """Request seeds as int64 [n] (None: fresh draws); ApiError 422 when the count
        does not match. Deterministic models ignore them."""
        if seeds is None or not self.stochastic:
            return None
        if len(seeds) != n:
            raise ApiError(
                422,
                "validation_error",
                f"seeds has {len(seeds)} values for {n} observations; give one per observation",
            )
        return np.array(seeds, dtype=np.int64)

    def estimate(self, batch: int) -> tuple[float | None, float | None]:
        """Estimated chip time and energy of ``batch`` observations (hw.mapping):
        as many observations per board run as copies fit on the chip."""
        m = self.mapping
        if m is None:
            return None, None
        if batch == 1:
            return m.chip_time_s, m.energy_j
        copies = max(1, m.copies_per_chip)
        full, rest = divmod(batch, copies)
        runs = full + (1 if rest else 0)
        chip = m.chip
        energy = full * chip.power_w(copies * m.pes_used) * m.chip_time_s
        if rest:
            energy += chip.power_w(rest * m.pes_used) * m.chip_time_s
        return runs * m.chip_time_s, energy


def _model_card(provenance: dict[str, Any]) -> dict[str, Any]:
    """The figures a model card quotes: an explicit ``model_card`` block, else the
    evaluation and training recipe the agent records in the provenance."""
    card = provenance.get("model_card")
    if isinstance(card, dict):
        return dict(card)
    keys = ("evaluation", "recipe", "teacher", "finetune")
    return {k: provenance[k] for k in keys if k in provenance}


def _map(artifact: ModelArtifact, settings: Settings) -> tuple[Any | None, str | None]:
    if map_network is None:
        return None, "hw.mapping is not available"
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
        self.primary_error = None
        self._breaker_until, self._breaker_reason = 0.0, None
        try:
            backend = await asyncio.to_thread(
                create_backend, s.backend_spec(), **s.backend_kwargs()
            )
            self.primary = Lane("primary", backend, s)
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

    async def infer(
        self,
        entry: ModelEntry,
        obs: np.ndarray,
        t0: float,
        request_id: str | None = None,
        seeds: np.ndarray | None = None,
    ) -> tuple[InferenceResult, bool]:
        """Run ``obs`` through the primary, else the fallback; returns (result, fallback).

        ``t0`` is the request's start (perf_counter); nothing is answered after
        ``t0 + deadline``: 504 instead. ``seeds``: Poisson encoder seeds, one per
        observation (checked by :meth:`ModelEntry.seeds`), or None for fresh draws."""
        deadline = t0 + self.deadline_s
        primary = self.primary
        if (
            primary is not None
            and primary.has(entry.name)
            and (
                self._breaker_until == 0.0  # the usual case: no recent failure
                or self.fallback is None  # nobody else to ask
                or time.monotonic() >= self._breaker_until  # time to try the primary again
            )
        ):
            outcome = await self._try_primary(primary, entry, obs, t0, deadline, request_id, seeds)
            if type(outcome) is InferenceResult:
                return outcome, False
            reason = str(outcome)
        else:
            reason = "primary_unavailable"
        return await self._run_fallback(entry, obs, deadline, reason, seeds), True

    async def _try_primary(
        self,
        lane: Lane,
        entry: ModelEntry,
        obs: np.ndarray,
        t0: float,
        deadline: float,
        request_id: str | None,
        seeds: np.ndarray | None,
    ) -> InferenceResult | str:
        """The primary's result, or the reason to fall back (a string)."""
        budget = min(t0 + self.primary_timeout_s, deadline) - time.perf_counter()
        try:
            res = await lane.run(entry.name, obs, budget, seeds)
        except QueueFull as exc:
            raise ApiError(
                429,
                "queue_full",
                f"backend {lane.name!r} is busy: {lane.pending} calls in flight or waiting",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except LaneTimeout:
            self._open_breaker(f"primary timed out after {self.primary_timeout_s:.3f} s")
            logger.warning(
                "primary backend timed out",
                extra={"request_id": request_id, "model": entry.name, "role": "primary"},
            )
            return "timeout"
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            self._open_breaker(f"primary failed: {msg}")
            logger.warning(
                "primary backend failed",
                extra={"request_id": request_id, "model": entry.name, "error": msg},
            )
            return "error"
        if time.perf_counter() > deadline:
            raise ApiError(504, "deadline", self._deadline_msg())
        self.metrics.observe_backend(entry.name, res.backend, res.compute_us * 1e-6, len(res))
        if self._breaker_until:
            self._breaker_until = 0.0
            self._breaker_reason = None
        states = self.warm[entry.name]
        if states.get("primary") != "warm":  # a real answer counts as a warm-up
            states["primary"] = "warm"
        return res

    def _deadline_msg(self) -> str:
        return f"no answer within the deadline of {self.settings.deadline_ms:g} ms"

    async def _run_fallback(
        self,
        entry: ModelEntry,
        obs: np.ndarray,
        deadline: float,
        reason: str,
        seeds: np.ndarray | None,
    ) -> InferenceResult:
        lane = self.fallback
        if lane is None or not lane.has(entry.name):
            if reason == "timeout":
                raise ApiError(504, "deadline", self._deadline_msg())
            detail = self._breaker_reason or self.primary_error or "backend unavailable"
            raise ApiError(503, "backend_error", f"no backend could answer: {detail}")
        try:
            res = await lane.run(entry.name, obs, deadline - time.perf_counter(), seeds)
        except QueueFull as exc:
            raise ApiError(
                429,
                "queue_full",
                f"fallback backend {lane.name!r} is busy",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except LaneTimeout:
            raise ApiError(504, "deadline", self._deadline_msg()) from None
        except Exception as exc:
            raise ApiError(
                503, "backend_error", f"fallback backend failed: {type(exc).__name__}: {exc}"
            ) from None
        if time.perf_counter() > deadline:
            raise ApiError(504, "deadline", self._deadline_msg())
        self.metrics.observe_backend(entry.name, res.backend, res.compute_us * 1e-6, len(res))
        self.metrics.fallbacks.labels(entry.name, reason).inc()
        return res

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
