"""The low-latency door: length-prefixed msgpack frames on a plain TCP socket
(``S2LOOP_TCP_BIND``), for control loops at 1 kHz where HTTP and WebSocket framing
cost more than the inference. The framing is in ``s2loop_client.contract``.

Served on the server's own event loop (uvloop under uvicorn) by the same request
pipeline as HTTP: same validation, errors, deadlines (from a frame's arrival) and
metrics. Frames of a connection are read as they arrive, time-stamped, and answered
in order by one task per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from typing import Any

from s2loop_client import contract as wire
from service.errors import ApiError
from service.logs import new_request_id
from service.pipeline import Pipeline, decode, start_eagerly

logger = logging.getLogger("s2loop.service")

_LEN = struct.Struct("<I")
BACKLOG = 1024  # frames a connection may have read and not answered (then: stop reading)


class _Connection(asyncio.Protocol):
    """One client connection: frames are time-stamped as they arrive and answered in
    order; an answer that needs no wait (the emulator) is sent at once, from
    ``data_received`` (:func:`~service.pipeline.start_eagerly`); while one waits (a board
    run), later frames queue behind it."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.buffer = bytearray()
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.pending: asyncio.Task[Any] | None = None  # the answer being waited for
        self.transport: asyncio.Transport | None = None
        self.authorized = not pipeline.keys
        self.id = new_request_id()
        self.n = 0
        self.paused = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        arrived = time.perf_counter()
        while len(buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(buf)
            if size > self.pipeline.limit or size > wire.MAX_FRAME_BYTES:
                self._refuse(self.pipeline.too_large(size))  # framing can't go on
                return
            end = _LEN.size + size
            if len(buf) < end:
                break
            frame = bytes(buf[_LEN.size : end])
            del buf[:end]
            if self.pending is not None or self.waiting:
                self.waiting.append((arrived, frame))
            else:
                self._answer(arrived, frame)
        if len(self.waiting) > BACKLOG and not self.paused and self.transport:
            self.transport.pause_reading()
            self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.pending.cancel()
        self.waiting.clear()

    def _answer(self, arrived: float, frame: bytes) -> None:
        if not self.authorized:
            self._hello(frame)
            return
        self.n += 1
        coro = self.pipeline.handle(
            "frame", frame, arrived, f"{self.id}.{self.n}", codec="msgpack", door="tcp"
        )
        done, value = start_eagerly(coro)
        if done:
            self._send(value[1])
        else:
            self.pending = value
            value.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[Any]) -> None:
        self.pending = None
        if task.cancelled():
            return
        self._send(task.result()[1])
        while self.waiting and self.pending is None:
            self._answer(*self.waiting.popleft())
        if self.paused and len(self.waiting) < BACKLOG // 2 and self.transport:
            self.transport.resume_reading()
            self.paused = False

    def _send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LEN.pack(len(payload)) + payload)

    def _refuse(self, exc: ApiError) -> None:
        _, payload, _ = self.pipeline.error_reply(exc, self.id, codec="msgpack", door="tcp")
        self._send(payload)
        if self.transport is not None:
            self.transport.close()

    def _hello(self, frame: bytes) -> None:
        """The first frame when API keys are on: ``{"hello": {"api_key": KEY}}``."""
        try:
            msg = decode(frame)
            hello = msg.get("hello") if isinstance(msg, dict) else None
            key = hello.get("api_key") if isinstance(hello, dict) else None
            self.pipeline.authorize(b"Bearer " + str(key or "").encode())
        except ApiError as exc:
            self._refuse(exc)
            return
        self.authorized = True
        self._send(self.pipeline.encode({"hello": "ok"}, "msgpack"))


class TcpDoor:
    """The TCP endpoint of one app; started and stopped with it."""

    def __init__(self, pipeline: Pipeline, bind: str) -> None:
        self.pipeline = pipeline
        host, _, port = bind.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Connection(self.pipeline), self.host, self.port
        )
        self.port = self.server.sockets[0].getsockname()[1]  # the real one when 0 was asked
        logger.info("TCP endpoint listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
