"""``create_app(settings)`` builds one server instance: the service, the request
pipeline, the routers, the error handlers and the fast path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import routes
from service.errors import INTERNAL, STATUS_KIND, ApiError
from service.fastpath import ROUTES, S2LoopApp, fast_route
from service.logs import configure_logging
from service.metrics import Metrics
from service.pipeline import Pipeline, validation_error
from service.runtime import Service
from service.settings import Settings
from service.tcp import TcpDoor

logger = logging.getLogger("s2loop.service")

DESCRIPTION = (
    "Send an observation, get the greedy action and the Q-values of a quantized spiking "
    "Q-network. Also over WebSocket at `/v1/act/ws` (each message is an `/v1/act` body; a "
    'bad message gets an `{"error": ...}` answer and the connection stays open). Errors are '
    '`{"error": {"kind", "message"}}`.'
)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _start_recording(
    settings: Settings, service: Service, pipeline: Pipeline, metrics: Metrics
) -> None:
    """The flight recorder and the shadow models, when the settings ask for them."""
    from hw.artifact import ArtifactError, load_artifact

    if settings.record_dir is not None:
        from service.recorder import Recorder

        pipeline.recorder = Recorder(
            settings.record_dir,
            rotate_rows=settings.record_rotate_rows,
            rotate_s=settings.record_rotate_s,
            queue_rows=settings.record_queue_rows,
            metrics=metrics,
        )
    shadows = {}
    for live, path in settings.shadows().items():
        entry = service.entries.get(live)
        try:
            art = load_artifact(path)
        except ArtifactError as exc:
            logger.error("shadow model not loaded", extra={"model": live, "error": str(exc)})
            continue
        if entry is None or (art.observation_size, art.action_count) != (
            entry.artifact.observation_size,
            entry.artifact.action_count,
        ):
            msg = f"no live model {live!r} with the shadow's observation and action sizes"
            logger.error("shadow model not loaded", extra={"model": live, "error": msg})
            continue
        shadows[live] = path
    if shadows:
        from service.shadow import Shadow

        pipeline.shadow = Shadow(shadows, metrics, pipeline.recorder)


def _log_doors(settings: Settings) -> None:
    """Say at start which doors need a key (and TLS); warn when beyond loopback with none."""
    doors = ["http", "ws"] + (["tcp"] if settings.tcp_bind else [])
    keyed = bool(settings.keys())
    logger.info(
        "API keys required" if keyed else "API open: no API keys",
        extra={
            "keys_required": doors if keyed else [],
            "open": [] if keyed else doors,
            "tls": doors if settings.ssl_certfile else [],
            "reload_route": "token" if settings.reload_token else "off",
        },
    )
    hosts = [settings.host]
    if settings.tcp_bind:
        hosts.append(settings.tcp_bind.rpartition(":")[0].strip("[]"))
    exposed = [h for h in hosts if h not in LOOPBACK]
    if exposed and not keyed:
        logger.warning(
            "serving beyond loopback with no API keys: anyone who reaches the port can act; "
            "set S2LOOP_API_KEYS",
            extra={"hosts": exposed},
        )


def create_app(
    settings: Settings | None = None, on_started: Callable[[], None] | None = None
) -> S2LoopApp:
    """Build the server; models load (and warm up) in the lifespan, then ``on_started``
    runs (the ``serve`` command's process-wide policy)."""
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings, metrics)
    pipeline = Pipeline(service, metrics, settings)

    tcp = TcpDoor(pipeline, settings) if settings.tcp_bind else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await service.start()
        _start_recording(settings, service, pipeline, metrics)
        if tcp is not None:
            await tcp.start()
        _log_doors(settings)
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            if tcp is not None:
                await tcp.stop()
            await service.stop()
            for part in (pipeline.shadow, pipeline.recorder):  # shadow rows go to the recorder
                if part is not None:
                    part.close()
            pipeline.shadow = pipeline.recorder = None

    app = S2LoopApp(
        title="s2loop",
        version="1",
        summary="Closed-loop control with spiking Q-networks on SpiNNaker2 or its emulator",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.service, app.state.pipeline, app.state.tcp = service, pipeline, tcp
    for router in (routes.inference, routes.models, routes.operations):
        app.include_router(router)

    def reply(request: Request, exc: ApiError) -> Response:
        rid = routes.request_id(request)
        status, payload, headers = pipeline.error_reply(exc, rid)
        headers = {**headers, "x-request-id": rid}
        return Response(payload, status, headers=headers, media_type=routes.JSON)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return reply(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return reply(request, validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = STATUS_KIND.get(exc.status_code, "http_error")
        return reply(request, ApiError(exc.status_code, kind, str(exc.detail), headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error", extra={"path": request.url.path})
        return reply(request, INTERNAL)

    if settings.fast_path:
        app.fast_routes = {path: fast_route(pipeline, r) for path, r in ROUTES.items()}
    return app


def create_app_from_env() -> S2LoopApp:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from S2LOOP_*
    (each worker process configures its own logging)."""
    from service.cli import freeze_after_start

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings, on_started=freeze_after_start)
