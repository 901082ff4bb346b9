"""The transport floor: a bare FastAPI app whose ``/v1/act`` returns a constant.

It answers the same paths as ``s2loop serve`` (``POST /v1/act``, WebSocket
``/v1/act/ws``, ``GET /readyz``) so the very same client code measures both;
what it leaves out is everything but HTTP/WebSocket handling, FastAPI's routing
and uvicorn: no body parsing, no validation, no inference. The constant is a
real ``/v1/act`` answer of the shipped CartPole model, so the bytes on the wire
are the same size.

Run: ``python -m bench.floor --host 127.0.0.1 --port 8001``. uvicorn gets the
settings ``s2loop serve`` gives it (``service/cli.py``): no log config, access
log as ``S2LOOP_ACCESS_LOG`` (default off), the same WebSocket implementation and
size limit, auto loop/http (uvloop and httptools when installed).
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

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


def uvicorn_options(host: str, port: int) -> dict[str, object]:
    """The keyword arguments ``s2loop serve`` passes to ``uvicorn.run`` (one worker)."""
    from service.settings import Settings

    return Settings(host=host, port=port).uvicorn_options()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_floor_app(), **uvicorn_options(args.host, args.port))


if __name__ == "__main__":
    main()
