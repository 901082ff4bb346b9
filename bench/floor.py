"""The transport floors: servers that answer a constant, so a client measures what
HTTP, WebSocket or TCP handling costs with no parsing, validation or inference.

One process, one event loop (uvloop when installed, as under ``s2loop serve``), three
listeners:

- ``--port``: a bare FastAPI app whose ``POST /v1/act`` returns a constant and whose
  ``/v1/act/ws`` answers every message with it (FastAPI's routing included);
- ``--raw-port``: a plain ASGI app (no framework): any POST gets the constant, a
  WebSocket gets its own messages echoed back;
- ``--tcp-port``: a TCP server answering every length-prefixed frame with the constant
  answer as a msgpack frame (the framing of ``S2LOOP_TCP_BIND``).

The constant is a real ``/v1/act`` answer of the shipped CartPole model, so the bytes on
the wire are the same size. uvicorn gets the settings ``s2loop serve`` gives it.

Run: ``python -m bench.floor --port 8001 --raw-port 8002 --tcp-port 8003``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import orjson
from fastapi import FastAPI, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

from s2loop_client import framing

#: a /v1/act answer of the shipped CartPole model (same size on the wire)
ANSWER = (
    b'{"model":"cartpole","action":1,"q_values":[-1.0317,1.2044],"backend":"emulator",'
    b'"fallback":false,"timing":{"server_us":21.53,"compute_us":9.84,"ticks":15,'
    b'"chip_time_s":0.015,"energy_j":0.0035611486486486487}}'
)


def create_floor_app() -> FastAPI:
    app = FastAPI(title="s2loop transport floor")

    @app.post("/v1/act")
    async def act() -> Response:
        return Response(ANSWER, media_type="application/json")

    @app.websocket("/v1/act/ws")
    async def act_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = ANSWER.decode()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await websocket.send_text(text)
        except WebSocketDisconnect:
            return

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain ASGI: a constant for any POST (and GET /readyz), an echo on a WebSocket."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


class _ConstantFrames(asyncio.Protocol):
    frame = b""

    def connection_made(self, transport: Any) -> None:
        import socket

        self.transport = transport
        self.buffer = bytearray()
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for _ in framing.split(self.buffer):
            self.transport.write(self.frame)


def uvicorn_options(host: str, port: int) -> dict[str, object]:
    """The keyword arguments ``s2loop serve`` passes to ``uvicorn.run`` (one worker)."""
    from service.settings import Settings

    return Settings(host=host, port=port).uvicorn_options()


async def serve(host: str, port: int, raw_port: int | None, tcp_port: int | None) -> None:
    import msgpack
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()  # one handler below stops every server

    servers = [Server(uvicorn.Config(create_floor_app(), **uvicorn_options(host, port)))]
    if raw_port:
        servers.append(Server(uvicorn.Config(raw_app, **uvicorn_options(host, raw_port))))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [setattr(s, "should_exit", True) for s in servers])
    if tcp_port:
        body = msgpack.packb(orjson.loads(ANSWER))
        _ConstantFrames.frame = framing.frame(body)
        await loop.create_server(_ConstantFrames, host, tcp_port)
    await asyncio.gather(*(s.serve() for s in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--raw-port", type=int, default=None)
    parser.add_argument("--tcp-port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(args.host, args.port, args.raw_port, args.tcp_port))


if __name__ == "__main__":
    main()
