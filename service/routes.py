"""The routes, as FastAPI routers. Inference routes hand the raw body to the request
pipeline (:mod:`service.pipeline`); they never build an answer themselves."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import deque
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from s2loop_client import contract as wire
from service.errors import ApiError
from service.logs import new_request_id
from service.metrics import Metrics
from service.pipeline import Pipeline, start_eagerly
from service.runtime import Service
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

JSON = wire.JSON
MSGPACK = wire.MSGPACK
#: messages a WebSocket connection may have read and not yet answered
WS_BACKLOG = 1024


def _state(name: str) -> Any:
    def get(conn: HTTPConnection) -> Any:
        return getattr(conn.app.state, name)

    return get


ServiceDep = Annotated[Service, Depends(_state("service"))]
PipelineDep = Annotated[Pipeline, Depends(_state("pipeline"))]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
Bearer = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description="settings.reload_token")),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed JSON"},
    401: {"model": ErrorBody, "description": "API keys are on and no valid one was sent"},
    404: {"model": ErrorBody, "description": "unknown model"},
    413: {"model": ErrorBody, "description": "body larger than max_body_bytes"},
    422: {"model": ErrorBody, "description": "the body does not fit the model"},
    429: {"model": ErrorBody, "description": "nothing can take the request now; see Retry-After"},
    503: {"model": ErrorBody, "description": "no backend could answer"},
    504: {"model": ErrorBody, "description": "no answer within the deadline"},
}


def request_id(conn: HTTPConnection) -> str:
    rid = conn.headers.get("x-request-id")
    return rid[:128] if rid else new_request_id()


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    media: dict[str, Any] = {"schema": schema}
    if schema.get("examples"):
        media["example"] = schema["examples"][0]
    return {"requestBody": {"required": True, "content": {JSON: media}}}


async def read_body(request: Request, pipeline: Pipeline) -> bytes:
    """The request body, refusing (413) anything over the limit, with or without a
    Content-Length header."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(length) > pipeline.limit:
            raise pipeline.too_large(int(length))
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > pipeline.limit:
            raise pipeline.too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def codec_of(request: Request) -> str:
    """msgpack for ``Content-Type: application/msgpack``, else JSON."""
    return "msgpack" if request.headers.get("content-type", "").startswith(MSGPACK) else "json"


async def _http(route: str, request: Request, pipeline: Pipeline) -> Response:
    arrived = time.perf_counter()
    rid = request_id(request)
    codec = codec_of(request)
    try:
        pipeline.authorize(request.headers.get("authorization"))
        body = await read_body(request, pipeline)
    except ApiError as exc:
        status, payload, headers = pipeline.error_reply(exc, rid, codec=codec)
    else:
        status, payload, headers = await pipeline.handle(route, body, arrived, rid, codec=codec)
    media = MSGPACK if codec == "msgpack" else JSON
    return Response(payload, status, headers={**headers, "x-request-id": rid}, media_type=media)


inference = APIRouter(tags=["inference"])


@inference.post(
    "/v1/act",
    summary="Greedy action and Q-values for one observation",
    response_model=None,
    responses={200: {"model": ActResponse}, **ERRORS},
    openapi_extra=_body_doc(ActRequest),
)
async def act(request: Request, pipeline: PipelineDep) -> Response:
    return await _http("act", request, pipeline)


@inference.post(
    "/v1/act/batch",
    summary="Actions and Q-values for many observations, in one backend call",
    response_model=None,
    responses={200: {"model": BatchResponse}, **ERRORS},
    openapi_extra=_body_doc(BatchRequest),
)
async def act_batch(request: Request, pipeline: PipelineDep) -> Response:
    return await _http("batch", request, pipeline)


@inference.websocket("/v1/act/ws")
async def act_ws(websocket: WebSocket, pipeline: PipelineDep) -> None:
    """Each message is an /v1/act body, a text frame in JSON or a binary frame in
    msgpack, answered in the same codec; answers come in order.

    Messages are read and time-stamped as they arrive, also while an earlier one waits
    for a slow backend: a message's deadline runs from its arrival, so one that waited
    behind slow answers past its deadline gets the 504 error, never a late action. A
    message whose answer needs no wait (the emulator) is answered at once, in the
    reading loop (:func:`~service.pipeline.start_eagerly`)."""
    try:
        pipeline.authorize(websocket.headers.get("authorization"))
    except ApiError as exc:  # refused at the handshake, with the error body
        _, payload, headers = pipeline.error_reply(exc, None)
        denial = Response(payload, exc.status, headers=headers, media_type=JSON)
        await websocket.send_denial_response(denial)
        return
    await websocket.accept()
    conn_id = new_request_id()
    waiting: deque[tuple[float, Any, str, str]] = deque()  # read while an answer is pending
    drainer: asyncio.Task[None] | None = None

    async def send(payload: bytes, codec: str) -> None:
        if codec == "json":
            await websocket.send_text(payload.decode())
        else:
            await websocket.send_bytes(payload)

    async def drain(first: asyncio.Task[Any], codec: str) -> None:
        """Answer the pending message, then those read meanwhile, in order."""
        nonlocal drainer
        try:
            await send((await first)[1], codec)
            while waiting:
                arrived, data, codec, rid = waiting.popleft()
                reply = await pipeline.handle("act", data, arrived, rid, codec=codec, door="ws")
                await send(reply[1], codec)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away
        finally:
            drainer = None

    n = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            arrived = time.perf_counter()
            n += 1
            text = message.get("text")
            data, codec = (
                (text, "json") if text is not None else (message.get("bytes") or b"", "msgpack")
            )
            rid = f"{conn_id}.{n}"
            if drainer is not None:
                waiting.append((arrived, data, codec, rid))
                if len(waiting) >= WS_BACKLOG:  # stop reading until the backlog is answered
                    await drainer
                continue
            coro = pipeline.handle("act", data, arrived, rid, codec=codec, door="ws")
            done, value = start_eagerly(coro)
            if done:
                await send(value[1], codec)
            else:
                drainer = asyncio.get_running_loop().create_task(drain(value, codec))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away while we answered: nothing more to say
    finally:
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await drainer


def require_key(conn: HTTPConnection, pipeline: PipelineDep) -> None:
    pipeline.authorize(conn.headers.get("authorization"))


models = APIRouter(tags=["models"])


@models.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[Depends(require_key)],
    responses={401: {"model": ErrorBody}},
)
async def list_models(service: ServiceDep) -> Response:
    body = {"models": [service.entries[n].info for n in sorted(service.entries)]}
    return Response(orjson.dumps(body), media_type=JSON)


@models.get(
    "/v1/models/{name}",
    response_model=ModelInfo,
    dependencies=[Depends(require_key)],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def get_model(name: str, service: ServiceDep) -> Response:
    return Response(orjson.dumps(service.entry(name).info), media_type=JSON)


@models.post(
    "/v1/models/{name}/reload",
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
    name: str, service: ServiceDep, settings: SettingsDep, credentials: Bearer
) -> Response:
    token = settings.reload_token.get_secret_value() if settings.reload_token else None
    if not token:
        msg = "reload is off: no reload token is configured (S2LOOP_RELOAD_TOKEN)"
        raise ApiError(403, "reload_disabled", msg)
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(orjson.dumps(await service.reload(name)), media_type=JSON)


operations = APIRouter(tags=["operations"])


@operations.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return Response(b'{"status":"alive"}', media_type=JSON)


@operations.get(
    "/readyz",
    summary="200 once every model has run a warm-up inference; 503 with the reasons",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(service: ServiceDep) -> Response:
    code, body = service.readiness()
    return Response(orjson.dumps(body), code, media_type=JSON)


@operations.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
