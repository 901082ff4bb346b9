"""The FastAPI app: ``create_app(settings)`` builds one server instance.

The inference routes (``/v1/act``, ``/v1/act/batch``, ``/v1/act/ws``) read the raw
body, parse it with pydantic's JSON parser (strict: numbers only, no NaN/inf),
run the backend and answer with orjson bytes; FastAPI's body and response
machinery is bypassed there because it costs more than the emulator itself.
The OpenAPI schema still documents their bodies (``openapi_extra``).
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from service.logs import configure_logging, new_request_id
from service.metrics import Metrics
from service.runtime import ApiError, Service
from service.schemas import (
    ActRequest,
    ActResponse,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ModelInfo,
    ModelList,
    Readiness,
    ReloadResponse,
)
from service.settings import Settings

logger = logging.getLogger("s2loop.service")

JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
M = TypeVar("M", bound=BaseModel)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed JSON"},
    404: {"model": ErrorBody, "description": "unknown model"},
    413: {"model": ErrorBody, "description": "body larger than max_body_bytes"},
    422: {"model": ErrorBody, "description": "the body does not fit the model"},
    429: {"model": ErrorBody, "description": "backend queue full; see Retry-After"},
    503: {"model": ErrorBody, "description": "no backend could answer"},
    504: {"model": ErrorBody, "description": "no answer within the deadline"},
}

_STATUS_KIND = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    examples = schema.get("examples") or []
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["example"] = examples[0]
    return {"requestBody": {"required": True, "content": {JSON: media}}}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def parse_body(model: type[M], body: bytes | str) -> M:
    """Parse and validate a JSON body; ApiError 400 (malformed) or 422 (does not fit)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            if not body or not body.strip():
                raise ApiError(400, "malformed_json", "request body is empty") from None
            raise ApiError(
                400, "malformed_json", f"request body is not valid JSON: {errors[0]['msg']}"
            ) from None
        details = [{"loc": _loc(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
        raise ApiError(422, "validation_error", shown + more, details=details[:50]) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes, with or
    without a Content-Length header."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(length) > limit:
            raise ApiError(
                413, "body_too_large", f"body of {length} bytes is over the limit of {limit}"
            )
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class S2LoopApp(FastAPI):
    """FastAPI with an ASGI fast path: POSTs to a path in ``fast_routes`` go straight
    to their handler; everything else (docs, other routes, lifespan) as usual."""

    fast_routes: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> S2LoopApp:
    """Build the server. Models load (and warm up) in the lifespan, not here."""
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings, metrics)
    limit = settings.max_body_bytes
    max_batch = settings.max_batch

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await service.start()
        # Everything alive now (libraries, models, routes: ~150k objects) lives as long
        # as the server. Freezing it keeps the cyclic GC from rescanning it: a full
        # collection took ~80 ms here, a stall long enough to miss a 200 Hz deadline.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await service.stop()

    app = S2LoopApp(
        title="s2loop",
        version="1",
        summary="Closed-loop control with spiking Q-networks on SpiNNaker2 or its emulator",
        description=(
            "Send an observation, get the greedy action and the Q-values of a quantized "
            "spiking Q-network. Also over WebSocket at `/v1/act/ws` (each text message is an "
            '`/v1/act` body; a bad message gets an `{"error": ...}` answer and the '
            'connection stays open). Errors are `{"error": {"kind", "message"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service

    def note_error(exc: ApiError, request_id: str | None) -> None:
        """Count every error; log the server-side ones (5xx) with the request id."""
        metrics.error(exc.kind)
        if exc.status >= 500:
            logger.warning(
                "request failed",
                extra={
                    "request_id": request_id,
                    "status": exc.status,
                    "kind": exc.kind,
                    "error": exc.message,
                },
            )

    def error_response(exc: ApiError, request_id: str | None) -> Response:
        note_error(exc, request_id)
        headers = dict(exc.headers or {})
        if request_id:
            headers["x-request-id"] = request_id
        return Response(
            orjson.dumps(exc.body(request_id)), exc.status, headers=headers, media_type=JSON
        )

    def request_id(request: Request) -> str:
        rid = request.headers.get("x-request-id")
        return rid[:128] if rid else new_request_id()

    # ------------------------------------------------------------- error handlers

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc, request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"loc": _loc(tuple(e.get("loc", ()))), "msg": e.get("msg", ""), "type": e.get("type")}
            for e in exc.errors()
        ]
        msg = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5]) or "invalid request"
        return error_response(
            ApiError(422, "validation_error", msg, details=details), request_id(request)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = _STATUS_KIND.get(exc.status_code, "http_error")
        return error_response(
            ApiError(exc.status_code, kind, str(exc.detail), headers=exc.headers),
            request_id(request),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        logger.exception("unexpected error", extra={"request_id": rid, "path": request.url.path})
        return error_response(ApiError(500, "internal", "internal server error"), rid)

    # ------------------------------------------------------------- inference
    # The routes' work, from raw body bytes to answer bytes; ApiError for anything
    # but a 200. Shared by the FastAPI routes, the ASGI fast path and the WebSocket.

    def act_answer(req: ActRequest, t0: float, res: Any, fallback: bool, entry: Any) -> bytes:
        elapsed = time.perf_counter() - t0
        metrics.observe_request("act", entry.name, elapsed)
        out = {
            "model": entry.name,
            "action": int(res.actions[0]),
            "q_values": res.q_values[0],
            "backend": res.backend,
            "fallback": fallback,
            "timing": {
                "server_us": elapsed * 1e6,
                "compute_us": res.compute_us,
                "ticks": res.ticks,
                "chip_time_s": entry.chip_time_s,
                "energy_j": entry.energy_j,
            },
        }
        if req.id is not None:
            out["id"] = req.id
        if res.seeds is not None:
            out["seed"] = int(res.seeds[0])
        return orjson.dumps(out, option=_NUMPY)

    async def act_core(body: bytes | str, t0: float, rid: str | None = None) -> bytes:
        req = parse_body(ActRequest, body)
        entry = service.entry(req.model)
        obs = entry.observation(req.observation)
        seeds = entry.seeds(None if req.seed is None else [req.seed], 1)
        res, fallback = await service.infer(entry, obs, t0, rid, seeds)
        return act_answer(req, t0, res, fallback, entry)

    async def batch_core(body: bytes | str, t0: float, rid: str | None = None) -> bytes:
        req = parse_body(BatchRequest, body)
        entry = service.entry(req.model)
        obs = entry.observations(req.observations, max_batch)
        seeds = entry.seeds(req.seeds, len(obs))
        res, fallback = await service.infer(entry, obs, t0, rid, seeds)
        chip_time, energy = entry.estimate(len(obs))
        elapsed = time.perf_counter() - t0
        metrics.observe_request("batch", entry.name, elapsed)
        out = {
            "model": entry.name,
            "actions": res.actions,
            "q_values": res.q_values,
            "backend": res.backend,
            "fallback": fallback,
            "timing": {
                "server_us": elapsed * 1e6,
                "compute_us": res.compute_us,
                "ticks": res.ticks,
                "chip_time_s": chip_time,
                "energy_j": energy,
                "batch_size": len(obs),
            },
        }
        if req.id is not None:
            out["id"] = req.id
        if res.seeds is not None:
            out["seeds"] = res.seeds
        return orjson.dumps(out, option=_NUMPY)

    async def run_route(request: Request, core: Any) -> Response:
        t0 = time.perf_counter()
        rid = request_id(request)
        try:
            payload = await core(await read_body(request, limit), t0, rid)
        except ApiError as exc:
            return error_response(exc, rid)
        return Response(payload, media_type=JSON, headers={"x-request-id": rid})

    @app.post(
        "/v1/act",
        tags=["inference"],
        summary="Greedy action and Q-values for one observation",
        response_model=None,
        responses={200: {"model": ActResponse}, **_ERROR_RESPONSES},
        openapi_extra=_body_doc(ActRequest),
    )
    async def act(request: Request) -> Response:
        return await run_route(request, act_core)

    @app.post(
        "/v1/act/batch",
        tags=["inference"],
        summary="Actions and Q-values for many observations, in one backend call",
        response_model=None,
        responses={200: {"model": BatchResponse}, **_ERROR_RESPONSES},
        openapi_extra=_body_doc(BatchRequest),
    )
    async def act_batch(request: Request) -> Response:
        return await run_route(request, batch_core)

    def fast_route(core: Any) -> Any:
        """The same route as plain ASGI: no routing, Request object or response class
        (they cost more than the emulator's inference)."""

        async def handle(scope: dict[str, Any], receive: Any, send: Any) -> None:
            t0 = time.perf_counter()
            rid = length = None
            for key, value in scope["headers"]:
                if key == b"content-length":
                    length = value
                elif key == b"x-request-id":
                    rid = value[:128].decode("latin-1")
            rid = rid or new_request_id()
            status = 200
            extra = None
            try:
                if length is not None:
                    if not length.isdigit():
                        raise ApiError(400, "bad_request", "Content-Length is not a number")
                    if int(length) > limit:
                        raise ApiError(
                            413,
                            "body_too_large",
                            f"body of {int(length)} bytes is over the limit of {limit}",
                        )
                body = b""
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    if chunk:
                        body = body + chunk if body else chunk
                        if len(body) > limit:
                            raise ApiError(
                                413, "body_too_large", f"body is over the limit of {limit} bytes"
                            )
                    more = message.get("more_body", False)
                payload = await core(body, t0, rid)
            except ApiError as exc:
                note_error(exc, rid)
                status = exc.status
                payload = orjson.dumps(exc.body(rid))
                extra = exc.headers
            except Exception:
                logger.exception("unexpected error", extra={"request_id": rid})
                metrics.error("internal")
                status = 500
                payload = orjson.dumps(ApiError(500, "internal", "internal server error").body(rid))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", rid.encode("latin-1")),
            ]
            if extra:
                headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

        return handle

    if settings.fast_path:
        app.fast_routes = {"/v1/act": fast_route(act_core), "/v1/act/batch": fast_route(batch_core)}

    @app.websocket("/v1/act/ws")
    async def act_ws(websocket: WebSocket) -> None:
        """Each text (or binary) message is an /v1/act body; each gets one answer."""
        await websocket.accept()
        conn_id = new_request_id()
        n = 0
        receive = websocket.receive
        send = websocket.send_text
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                t0 = time.perf_counter()
                n += 1
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                try:
                    if len(data) > limit:
                        raise ApiError(
                            413, "body_too_large", f"message is over the limit of {limit} bytes"
                        )
                    answer = await act_core(data, t0, f"{conn_id}.{n}")
                except ApiError as exc:
                    note_error(exc, f"{conn_id}.{n}")
                    body = exc.body(f"{conn_id}.{n}")
                    body["error"]["status"] = exc.status
                    answer = orjson.dumps(body)
                except Exception:
                    logger.exception("unexpected error", extra={"request_id": f"{conn_id}.{n}"})
                    metrics.error("internal")
                    answer = orjson.dumps(
                        {"error": {"kind": "internal", "message": "internal server error"}}
                    )
                await send(answer.decode())
        except WebSocketDisconnect:
            return

    # ------------------------------------------------------------- models

    @app.get("/v1/models", tags=["models"], response_model=ModelList)
    async def list_models() -> Response:
        body = {"models": [service.entries[n].info for n in sorted(service.entries)]}
        return Response(orjson.dumps(body), media_type=JSON)

    @app.get(
        "/v1/models/{name}",
        tags=["models"],
        response_model=ModelInfo,
        responses={404: {"model": ErrorBody}},
    )
    async def get_model(name: str) -> Response:
        return Response(orjson.dumps(service.entry(name).info), media_type=JSON)

    bearer = HTTPBearer(auto_error=False, description="settings.reload_token")

    @app.post(
        "/v1/models/{name}/reload",
        tags=["models"],
        summary="Load a model's artifact again and swap it in atomically",
        response_model=ReloadResponse,
        responses={
            401: {"model": ErrorBody},
            403: {"model": ErrorBody, "description": "no reload token configured"},
            404: {"model": ErrorBody},
            422: {"model": ErrorBody, "description": "bad artifact; the old model serves on"},
            503: {"model": ErrorBody, "description": "a backend cannot load it"},
        },
    )
    async def reload_model(
        name: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Response:
        token = settings.reload_token
        if not token:
            raise ApiError(
                403,
                "reload_disabled",
                "reload is off: no reload token is configured (S2LOOP_RELOAD_TOKEN)",
            )
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(orjson.dumps(await service.reload(name)), media_type=JSON)

    # ------------------------------------------------------------- operations

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> Response:
        return Response(b'{"status":"alive"}', media_type=JSON)

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="200 once every model has run a warm-up inference; 503 with the reasons",
        response_model=Readiness,
        responses={503: {"model": Readiness}},
    )
    async def readyz() -> Response:
        code, body = service.readiness()
        return Response(orjson.dumps(body), code, media_type=JSON)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_app_from_env() -> S2LoopApp:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from S2LOOP_*
    (each worker process configures its own logging)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
