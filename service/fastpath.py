"""The plain-ASGI door for ``POST /v1/act`` and ``POST /v1/act/batch``.

Why it exists: for the emulator, the inference costs less than FastAPI's routing,
``Request`` object, dependency resolution and response class together; answering
these two routes straight from the ASGI scope took ``/v1/act`` from about 1.4x to
about 1x a bare FastAPI constant endpoint. It decides nothing itself: the body goes to
the same :class:`~service.pipeline.Pipeline` as the FastAPI routes (which stay, for
the schema and for ``fast_path=false``). Middleware cannot wrap it, so adding
middleware to the app turns it off (:class:`S2LoopApp`): then every request takes the
normal stack and the middleware sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from service.errors import ApiError
from service.logs import new_request_id
from service.pipeline import Pipeline

logger = logging.getLogger("s2loop.service")

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
ROUTES = {"/v1/act": "act", "/v1/act/batch": "batch"}
MSGPACK = b"application/msgpack"


def fast_route(pipeline: Pipeline, route: str) -> ASGI:
    limit = pipeline.limit

    async def handle(scope: dict[str, Any], receive: Any, send: Any) -> None:
        arrived = time.perf_counter()
        rid = length = authorization = None
        codec = "json"
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"x-request-id":
                rid = value[:128].decode("latin-1")
            elif key == b"content-type" and value.startswith(MSGPACK):
                codec = "msgpack"
            elif key == b"authorization":
                authorization = value
        rid = rid or new_request_id()
        body = b""
        try:
            if pipeline.keys:
                pipeline.authorize(authorization)
            if length is not None:
                if not length.isdigit():
                    raise ApiError(400, "bad_request", "Content-Length is not a number")
                if int(length) > limit:
                    raise pipeline.too_large(int(length))
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    body = body + chunk if body else chunk
                    if len(body) > limit:
                        raise pipeline.too_large()
                more = message.get("more_body", False)
        except ApiError as exc:
            status, payload, extra = pipeline.error_reply(exc, rid, codec=codec)
        else:
            status, payload, extra = await pipeline.handle(route, body, arrived, rid, codec=codec)
        headers = [
            (b"content-type", MSGPACK if codec == "msgpack" else b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
        ]
        if extra:
            headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return handle


class S2LoopApp(FastAPI):
    """FastAPI with the fast path: POSTs to a path in ``fast_routes`` go straight to
    their handler; everything else (docs, other routes, lifespan) as usual."""

    fast_routes: dict[str, ASGI] = {}  # noqa: RUF012 - replaced per instance

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        if self.fast_routes:
            logger.info(
                "middleware added: the fast path is off, every route takes the normal stack",
                extra={"middleware": getattr(middleware_class, "__name__", str(middleware_class))},
            )
            self.fast_routes = {}
        super().add_middleware(middleware_class, *args, **kwargs)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
