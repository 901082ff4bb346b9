"""The one request pipeline of an inference request, whichever door it came in by (an
HTTP route, the plain-ASGI fast path, a WebSocket message, a TCP frame): size limit,
decode (JSON or msgpack), validate against the model, run (deadline from arrival),
encode the answer in the request's codec, or the error body; metrics and the request
id on the way.

A door hands over the raw body, its codec, the time it arrived and a request id, and
gets back ``(status, payload, headers)``; it never builds an answer of its own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import msgpack
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from hw.trace import to_msgpack, trace_cells
from s2loop_client import contract as wire
from s2loop_client.codec import DecodeError, unpack_request
from service.errors import INTERNAL, ApiError
from service.metrics import Metrics
from service.records import ActBatch, ActRow, ErrorRow
from service.runtime import ModelEntry, Service
from service.schemas import ActRequest, BatchRequest
from service.settings import Settings

logger = logging.getLogger("s2loop.service")

M = TypeVar("M", bound=BaseModel)
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Reply = tuple[int, bytes, Mapping[str, str]]
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})  # a 200 adds none (read-only: shared)
_TRACE_KEY = msgpack.packb("trace")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """422 naming the first few problems (pydantic's or FastAPI's error list)."""
    details = [
        {"loc": _loc(tuple(e.get("loc", ()))), "msg": e.get("msg", ""), "type": e.get("type")}
        for e in errors
    ]
    shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5]) or "invalid request"
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return ApiError(422, "validation_error", shown + more, details=details[:50])


def decode(body: bytes | str) -> Any:
    """A msgpack request body as Python objects, its arrays as lists; ApiError 400 when
    it is not msgpack."""
    if not body:
        raise ApiError(400, "malformed_json", "request body is empty")
    try:
        return unpack_request(body if isinstance(body, bytes) else body.encode())
    except DecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is {exc}") from None


def not_a_map(obj: Any) -> ApiError:
    """422 for a msgpack body that decoded to something other than a request map."""
    kind = type(obj).__name__
    return ApiError(422, "validation_error", f"body: a request is a map, got a msgpack {kind}")


def parse_body(model: type[M], body: bytes | str | dict, codec: str = "json") -> M:
    """Validate a JSON body, or a msgpack one (bytes, or already decoded); ApiError 400
    (malformed) or 422 (does not fit)."""
    try:
        if codec == "msgpack":
            obj = decode(body) if isinstance(body, bytes | str) else body
            if type(obj) is not dict:
                raise not_a_map(obj)
            return model.__pydantic_validator__.validate_python(obj)  # model_validate, less a hop
        return model.model_validate_json(body)  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            if not body or not body.strip():
                raise ApiError(400, "malformed_json", "request body is empty") from None
            msg = f"request body is not valid JSON: {errors[0]['msg']}"
            raise ApiError(400, "malformed_json", msg) from None
        raise validation_error(errors) from None  # type: ignore[arg-type]


def _too_big(where: str = "") -> ApiError:
    msg = f"observation values must fit in float32 (|x| <= {FLOAT32_MAX:.4g}){where}"
    return ApiError(422, "validation_error", msg)


def observation(entry: ModelEntry, values: list[float]) -> np.ndarray:
    """One observation as float32 [1, obs]; ApiError 422 when it does not fit the model."""
    if len(values) != entry.observation_size:
        raise ApiError(
            422,
            "validation_error",
            f"observation has {len(values)} values, model {entry.name!r} expects "
            f"{entry.observation_size}",
        )
    if max(values) > FLOAT32_MAX or min(values) < -FLOAT32_MAX:
        raise _too_big()
    return np.array([values], dtype=np.float32)


def observations(entry: ModelEntry, rows: list[list[float]], max_batch: int) -> np.ndarray:
    """A batch as float32 [B, obs]; ApiError 422 naming the first row that does not fit."""
    if len(rows) > max_batch:
        msg = f"batch of {len(rows)} observations is larger than max_batch ({max_batch})"
        raise ApiError(422, "validation_error", msg)
    n = entry.observation_size
    for i, row in enumerate(rows):
        if len(row) != n:
            msg = f"observations[{i}] has {len(row)} values, model {entry.name!r} expects {n}"
            raise ApiError(422, "validation_error", msg)
    arr = np.array(rows, dtype=np.float64)
    if np.abs(arr).max() > FLOAT32_MAX:
        raise _too_big()
    return arr.astype(np.float32)


def seeds(entry: ModelEntry, given: list[int] | None, n: int) -> np.ndarray | None:
    """Request seeds as int64 [n] (None: fresh draws); deterministic models ignore them."""
    if given is None or not entry.stochastic:
        return None
    if len(given) != n:
        msg = f"seeds has {len(given)} values for {n} observations; give one per observation"
        raise ApiError(422, "validation_error", msg)
    return np.array(given, dtype=np.int64)


def check_trace(service: Service, entry: ModelEntry, rows: int) -> None:
    """ApiError 422 when a traced request cannot be answered: over the size cap
    (``MAX_TRACE_CELLS``), or no backend serving the model gives traces."""
    cells = rows * trace_cells(entry.artifact)
    if cells > wire.MAX_TRACE_CELLS:
        msg = (
            f"a trace of {rows} observation(s) of model {entry.name!r} covers {cells} tick x "
            f"neuron cells, over the limit of {wire.MAX_TRACE_CELLS}: trace fewer rows"
        )
        raise ApiError(422, "validation_error", msg)
    if not any(lane.backend.gives_traces for lane in service.lanes()):
        names = ", ".join(lane.name for lane in service.lanes())
        raise ApiError(422, "validation_error", f"backend {names} gives no spike traces")


def _tolist(arr: np.ndarray) -> list:
    return arr.tolist()


class Pipeline:
    def __init__(self, service: Service, metrics: Metrics, settings: Settings) -> None:
        self.service = service
        self.metrics = metrics
        self.limit = settings.max_body_bytes
        self.max_batch = settings.max_batch
        self.keys = settings.keys()
        self.recorder: Any = None  # service.recorder.Recorder, set at start when on
        self.shadow: Any = None  # service.shadow.Shadow, set at start when on
        self.routes = {"act": self.act, "batch": self.batch, "info": self.info}
        # one packer per app, used on its event loop only (a Packer is not thread-safe;
        # packb would build one per answer)
        self._packer = msgpack.Packer(default=_tolist, use_bin_type=True)

    def encode(self, body: dict[str, Any], codec: str) -> bytes:
        if codec == "msgpack":  # the same maps as JSON: arrays as plain lists
            return self._packer.pack(body)
        return orjson.dumps(body, option=_NUMPY)

    def authorize(self, authorization: str | bytes | None) -> None:
        """Nothing when the API is open or ``authorization`` is ``Bearer <a key>``; else
        ApiError 401. Compared in constant time, against every key; keys never logged."""
        if not self.keys:
            return
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, given = (authorization or b"").partition(b" ")
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given.strip(), key)
        if not (ok and scheme.lower() == b"bearer"):
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def too_large(self, size: int | None = None) -> ApiError:
        what = f"body of {size} bytes is" if size is not None else "body is"
        return ApiError(413, "body_too_large", f"{what} over the limit of {self.limit} bytes")

    def note(self, exc: ApiError, request_id: str | None) -> None:
        """Count every error; log the server-side ones (5xx) with the request id."""
        self.metrics.error(exc.kind)
        if exc.status >= 500:
            extra = {"request_id": request_id, "status": exc.status, "kind": exc.kind}
            logger.warning("request failed", extra={**extra, "error": exc.message})

    async def handle(
        self,
        route: str,
        body: bytes | str,
        arrived: float,
        request_id: str,
        *,
        codec: str = "json",
        door: str = "http",
    ) -> Reply:
        """The answer to one request, in ``codec``: never raises. ``door``: http, ws or
        tcp (errors over ws and tcp carry their status: they have no status line)."""
        try:
            if len(body) > self.limit:
                raise self.too_large(len(body))
            if route == "frame":  # a TCP frame: act, batch or model info by its keys
                body = decode(body)
                if not isinstance(body, dict):
                    raise not_a_map(body)
                route = "batch" if "observations" in body else "act"
                if "model_info" in body:
                    route = "info"
            out = await self.routes[route](body, arrived, request_id, codec, door)
            if type(out) is bytes:  # encoded by the route itself (a traced msgpack act)
                return 200, out, _NO_HEADERS
            if codec == "json":
                return 200, orjson.dumps(out, option=_NUMPY), _NO_HEADERS
            return 200, self._packer.pack(out), _NO_HEADERS
        except ApiError as exc:
            return self.error_reply(exc, request_id, codec=codec, door=door)
        except Exception:
            logger.exception("unexpected error", extra={"request_id": request_id})
            return self.error_reply(INTERNAL, request_id, codec=codec, door=door)

    def error_reply(
        self, exc: ApiError, request_id: str | None, *, codec: str = "json", door: str = "http"
    ) -> Reply:
        self.note(exc, request_id)
        if self.recorder is not None:
            row = ErrorRow(time.time(), request_id, door, exc.status, exc.kind, exc.message[:500])
            self.recorder.error(row)
        body = exc.body(request_id, with_status=door != "http")
        return exc.status, self.encode(body, codec), exc.headers

    # act and batch check the request at once and hand back _answer's coroutine for the
    # caller to await (one coroutine a request rather than two)
    def act(
        self, body: bytes | str, arrived: float, request_id: str, codec: str, door: str
    ) -> Awaitable[dict | bytes]:
        req = parse_body(ActRequest, body, codec)
        entry = self.service.entry(req.model)
        obs = observation(entry, req.observation)
        given = None if req.seed is None else seeds(entry, [req.seed], 1)
        return self._answer(True, req, entry, obs, given, arrived, request_id, codec, door)

    async def info(self, body: Any, arrived: float, request_id: str, codec: str, door: str) -> dict:
        """``{"model_info": NAME}`` over TCP: what GET /v1/models/NAME answers."""
        return self.service.entry(str(body.get("model_info"))).info

    def batch(
        self, body: bytes | str, arrived: float, request_id: str, codec: str, door: str
    ) -> Awaitable[dict | bytes]:
        req = parse_body(BatchRequest, body, codec)
        entry = self.service.entry(req.model)
        obs = observations(entry, req.observations, self.max_batch)
        given = seeds(entry, req.seeds, len(obs))
        for name, values in (("episode_ids", req.episode_ids), ("steps", req.steps)):
            if values is not None and len(values) != len(obs):
                msg = f"{name} has {len(values)} values for {len(obs)} observations"
                raise ApiError(422, "validation_error", msg)
        return self._answer(False, req, entry, obs, given, arrived, request_id, codec, door)

    async def _answer(
        self,
        single: bool,
        req: Any,
        entry: ModelEntry,
        obs: np.ndarray,
        given: np.ndarray | None,
        arrived: float,
        request_id: str,
        codec: str,
        door: str,
    ) -> dict | bytes:
        """What act and batch share: run, time, answer, record, shadow. ``single``: an
        ``/v1/act`` answer (one row, singular names: ``action``, ``seed``, ``episode_id``,
        ``step``, ``trace``), else a batch answer (plural names, one value a row)."""
        rows = len(obs)
        tail = None
        if req.trace:
            check_trace(self.service, entry, rows)
        res, fallback = await self.service.infer(entry, obs, arrived, request_id, given, req.trace)
        elapsed = time.perf_counter() - arrived
        self.metrics.observe_request("act" if single else "batch", entry.name, elapsed)
        timing = {"server_us": elapsed * 1e6, "compute_us": res.compute_us, "ticks": res.ticks,
                  "chip_time_s": entry.chip_time_s, "energy_j": entry.energy_j}  # fmt: skip
        if single:
            # JSON: float32 as orjson writes it (shortest repr); msgpack: the same doubles
            # the packer's default would make, without its callback
            q = res.q_values[0].tolist() if codec == "msgpack" else res.q_values[0]
            out = {"model": entry.name, "action": int(res.actions[0]), "q_values": q,
                   "backend": res.backend, "fallback": fallback, "timing": timing}  # fmt: skip
            episode_ids = None if req.episode_id is None else [req.episode_id]
            steps = None if req.step is None else [req.step]
        else:
            timing["chip_time_s"], timing["energy_j"] = entry.estimate(rows)
            timing["batch_size"] = rows
            out = {"model": entry.name, "actions": res.actions, "q_values": res.q_values,
                   "backend": res.backend, "fallback": fallback, "timing": timing}  # fmt: skip
            episode_ids, steps = req.episode_ids, req.steps
        if req.id is not None:
            out["id"] = req.id
        # echoed: a single's as one value, a batch's one value a row (plural names)
        if single:
            if res.seeds is not None:
                out["seed"] = int(res.seeds[0])
            if req.episode_id is not None:
                out["episode_id"] = req.episode_id
            if req.step is not None:
                out["step"] = req.step
            if res.traces is not None and codec == "msgpack":
                tail = _TRACE_KEY + to_msgpack(res.traces[0])  # spliced in below
            elif res.traces is not None:
                out["trace"] = res.traces[0].to_dict()
        else:
            for name, values in (("seeds", res.seeds), ("episode_ids", episode_ids),
                                 ("steps", steps)):  # fmt: skip
                if values is not None:
                    out[name] = values
            if res.traces is not None:
                out["traces"] = [tr.to_dict() for tr in res.traces]
        if self.recorder is not None:
            self._record(single, request_id, entry, res, fallback, door, obs, episode_ids,
                         steps, elapsed)  # fmt: skip
        if self.shadow is not None and self.shadow.has(entry.name):
            self.shadow.offer(entry.name, request_id, obs, res.seeds, res.actions, res.q_values)
        if tail is not None:
            return self._with_tail(out, tail, res)
        return out

    def _with_tail(self, out: dict, tail: bytes, res: Any) -> bytes | dict:
        """``out`` in msgpack with one more entry already encoded (``tail``: key and value)
        appended: a trace written by compiled code (``hw.trace.to_msgpack``, byte for byte
        what the packer would write) rather than by the packer, ~4x faster. An answer map
        has fewer than 15 entries, so its header is one byte (a fixmap) with room for one."""
        head = self._packer.pack(out)
        if 0x80 <= head[0] < 0x8F:
            return bytes((head[0] + 1,)) + head[1:] + tail
        out["trace"] = res.traces[0].to_dict()  # not a fixmap: the packer writes it all
        return out

    def _record(
        self,
        single: bool,
        request_id: str,
        entry: ModelEntry,
        res: Any,
        fallback: bool,
        door: str,
        obs: np.ndarray,
        episode_ids: list[str] | None,
        steps: list[int] | None,
        elapsed: float,
    ) -> None:
        """The answer's rows to the flight recorder (a single row, or a batch queued whole
        and counted as its rows), with its traces."""
        now, sha = time.time(), entry.artifact.sha256
        if res.traces is not None:
            for i, tr in enumerate(res.traces):  # rows as the acts table names them
                row_id = request_id if single else f"{request_id}.{i}"
                self.recorder.trace((now, row_id, entry.name, tr.to_json().decode()))
        if single:
            seed = None if res.seeds is None else int(res.seeds[0])
            self.recorder.act(
                ActRow(now, request_id, episode_ids and episode_ids[0], steps and steps[0],
                       entry.name, sha, res.backend, fallback, door, obs[0], res.q_values[0],
                       int(res.actions[0]), seed, elapsed * 1e6, res.compute_us)
            )  # fmt: skip
        else:
            self.recorder.batch(
                ActBatch(now, request_id, episode_ids, steps, entry.name, sha, res.backend,
                         fallback, door, obs, res.q_values, res.actions, res.seeds,
                         elapsed * 1e6, res.compute_us)
            )  # fmt: skip


# --------------------------------------------------------------------- eager start


class _Resume:
    """Awaitable that goes on running a coroutine already started by hand (it yields what
    the coroutine yields, as ``yield from`` would)."""

    def __init__(self, coro: Any, yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Any:
        yielded = self.yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    yielded = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = self.coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _rest(coro: Any, yielded: Any) -> Any:
    return await _Resume(coro, yielded)


def start_eagerly(coro: Any) -> tuple[bool, Any]:
    """Run ``coro`` at once, up to its first wait: ``(True, result)`` when it never waited
    (an emulator answer: no task, no trip through the event loop), else ``(False, task)``
    with the rest running as a task. Python 3.12's eager tasks, by hand, for the doors
    that read a connection's messages as they arrive (WebSocket, TCP)."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, asyncio.ensure_future(_rest(coro, yielded))
