"""The low-latency door: length-prefixed msgpack frames on a TCP socket
(``S2LOOP_TCP_BIND``), for control loops at 1 kHz where HTTP and WebSocket framing
cost more than the inference. The framing is :mod:`s2loop_client.framing`, the one
module every TCP reader and writer uses.

Served on the server's own event loop (uvloop under uvicorn) by the same request
pipeline as HTTP: same validation, errors, deadlines (from a frame's arrival) and
metrics. Frames of a connection are read as they arrive, time-stamped, and answered
in order by one task per connection.

With a certificate (``S2LOOP_SSL_CERTFILE``) the endpoint speaks TLS only, on the same
port. A connection is held only while it earns it (settings ``tcp_*``, each closing
counted in ``s2loop_tcp_closed_total{reason}``): the TLS handshake and then the first
frame within ``tcp_hello_timeout_s``; a frame that has started within
``tcp_read_timeout_s``; no frame and no answer in flight for ``tcp_idle_timeout_s``;
a client that stops reading its answers, ``tcp_read_timeout_s``. Past
``tcp_max_connections`` a new connection gets a 503 ``too_many_connections`` frame
and is closed. Timers are lazy: one per connection, re-armed only when it fires, so a
frame costs no timer work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import Any

from s2loop_client import contract as wire
from s2loop_client import framing
from service.errors import ApiError
from service.logs import new_request_id
from service.pipeline import Pipeline, decode, start_eagerly
from service.settings import Settings

logger = logging.getLogger("s2loop.service")

# frames (and their bytes) a connection may have read and not answered; past either the
# server stops reading it until half of them are answered
BACKLOG = 1024
BACKLOG_BYTES = 8 << 20
_now = time.perf_counter
_frame = framing.frame


class _Connection(asyncio.Protocol):
    """One client connection: frames are time-stamped as they arrive and answered in
    order; an answer that needs no wait (the emulator) is sent at once, from
    ``data_received`` (:func:`~service.pipeline.start_eagerly`); while one waits (a board
    run), later frames queue behind it."""

    def __init__(self, door: TcpDoor) -> None:
        self.door = door
        self.pipeline = door.pipeline
        self.handle = door.pipeline.handle
        self.limit = min(door.pipeline.limit, wire.MAX_FRAME_BYTES)
        self.buffer = bytearray()
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.waiting_bytes = 0
        self.pending: asyncio.Task[Any] | None = None  # the answer being waited for
        self.transport: Any = None
        self.authorized = not door.pipeline.keys
        self.heard = False  # a whole first frame has come
        self.id = new_request_id()
        self.n = 0
        self.paused = False  # reading paused: too many frames read and not answered
        self.stalled: float | None = None  # writing paused (the client reads no answers) since
        self.started: float | None = None  # a partial frame in the buffer since
        self.opened = self.last = _now()
        self.timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None  # why the server closed it (counted once)
        # made by the server at accept (in accept order), before a TLS handshake: from now
        # on it counts, or it is past the cap and gets refused once it can be answered
        self.over = len(door.connections) >= door.max_connections
        if not self.over:
            door.connections.add(self)
            door.metrics.tcp_connections.inc()
        self._arm(door.hello_s + (0.05 if door.tls is not None else 0.0))

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: Any) -> None:
        """Called once the connection is ready: at once in plaintext, after the
        handshake with TLS (asyncio's ``ssl=``; the connection counts from its accept,
        when this object is made)."""
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        door = self.door
        if self.reason is not None:  # counted as a failed handshake meanwhile
            transport.close()
            return
        if self.over:
            err = ApiError(
                503,
                "too_many_connections",
                f"the TCP endpoint holds {door.max_connections} connections, its limit",
                retry_after_s=1.0,
            )
            self._send(self._error_payload(err))
            self._close("too_many_connections")
            return
        if door.tls is not None:  # the first frame's time starts after the handshake
            self.opened = self.last = _now()
            self._arm(door.hello_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.pending is not None:
            self.pending.cancel()
        self.waiting.clear()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        door = self.door
        if self in door.connections:
            door.connections.discard(self)
            door.metrics.tcp_connections.dec()

    def _close(self, reason: str) -> None:
        """Close the connection for ``reason`` (counted once)."""
        if self.reason is None:
            self.reason = reason
            self.door.metrics.tcp_closed.labels(reason).inc()
        self._forget()
        if self.transport is not None:
            if reason == "write_timeout":  # close() would wait for answers nobody reads
                self.transport.abort()
            else:
                self.transport.close()

    # ------------------------------------------------------------------ timers

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._check)

    def _check(self) -> None:
        """The timer fired: close the connection if its current deadline passed, else
        wait for that deadline (frames in between cost nothing)."""
        self.timer = None
        door, now = self.door, _now()
        if self.transport is None:  # the TLS handshake failed or took too long (then closed)
            self._close("tls_handshake_failed")
            return
        if self.stalled is not None:
            due, reason = self.stalled + door.read_s, "write_timeout"
        elif not self.heard:
            due, reason = self.opened + door.hello_s, "hello_timeout"
            if self.started is not None:
                due = min(due, self.started + door.read_s)
        elif self.paused:  # the server stopped reading (its backlog): not the client's delay
            due, reason = now + door.read_s, ""
        elif self.started is not None:
            due, reason = self.started + door.read_s, "read_timeout"
        elif self.pending is not None or self.waiting:
            due, reason = now + door.idle_s, ""  # answers in flight: not idle
        else:
            due, reason = self.last + door.idle_s, "idle_timeout"
        if reason and now >= due:
            self._close(reason)
        else:
            self._arm(due - now)

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        arrived = _now()
        self.last = arrived
        buf = self.buffer
        try:
            frames = framing.feed(buf, data, self.limit)
        except framing.FrameTooLarge as exc:
            self._refuse(self.pipeline.too_large(exc.size), "frame_too_large")
            return
        if buf:
            if frames or self.started is None:
                self.started = arrived
        else:
            self.started = None
        for frame in frames:
            if self.pending is not None or self.waiting:
                self.waiting.append((arrived, frame))
                self.waiting_bytes += len(frame)
            else:
                self._answer(arrived, frame)
        full = len(self.waiting) > BACKLOG or self.waiting_bytes > BACKLOG_BYTES
        if full and not self.paused and self.transport:
            self.transport.pause_reading()
            self.paused = True

    def _answer(self, arrived: float, frame: bytes) -> None:
        if not self.heard:  # from now on the idle and read timeouts apply
            self.heard = True
            self._arm(min(self.door.idle_s, self.door.read_s))
        if not self.authorized:
            self._hello(frame)
            return
        self.n += 1
        coro = self.handle(
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
        self.last = _now()  # an answer after a wait: idle from now (eager ones: from arrival)
        if task.cancelled():
            return
        self._send(task.result()[1])
        while self.waiting and self.pending is None:
            arrived, frame = self.waiting.popleft()
            self.waiting_bytes -= len(frame)
            self._answer(arrived, frame)
        half = len(self.waiting) < BACKLOG // 2 and self.waiting_bytes < BACKLOG_BYTES // 2
        if self.paused and half and self.transport:
            self.paused = False
            if self.stalled is None:
                self._resume_reading()

    # ------------------------------------------------------------------ writing

    def _send(self, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_frame(payload))

    def pause_writing(self) -> None:
        """The client does not read its answers: stop reading its frames until it does
        (closed after ``tcp_read_timeout_s``)."""
        self.stalled = _now()
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
        self._arm(self.door.read_s)  # the write timeout may come before the timer's time

    def resume_writing(self) -> None:
        self.stalled = None
        if self.transport is not None and not self.paused:
            self._resume_reading()

    def _resume_reading(self) -> None:
        """Read the client again; a frame it had started gets its read timeout anew (the
        wait was the server's)."""
        if self.buffer:
            self.started = _now()
        self.transport.resume_reading()

    def _error_payload(self, exc: ApiError) -> bytes:
        return self.pipeline.error_reply(exc, self.id, codec="msgpack", door="tcp")[1]

    def _refuse(self, exc: ApiError, reason: str) -> None:
        self._send(self._error_payload(exc))
        self._close(reason)

    def _hello(self, frame: bytes) -> None:
        """The first frame when API keys are on: ``{"hello": {"api_key": KEY}}``."""
        try:
            msg = decode(frame)
            hello = msg.get("hello") if isinstance(msg, dict) else None
            key = hello.get("api_key") if isinstance(hello, dict) else None
            if not isinstance(key, str):
                key = ""
            self.pipeline.authorize(b"Bearer " + key.encode("utf-8", "replace"))
        except ApiError as exc:
            self._refuse(exc if exc.status == 401 else _unauthorized(), "unauthorized")
            return
        self.authorized = True
        self._send(self.pipeline.encode({"hello": "ok"}, "msgpack"))


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", 'the first frame must be {"hello": {"api_key": KEY}}')


class TcpDoor:
    """The TCP endpoint of one app; started and stopped with it."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        assert settings.tcp_bind
        self.pipeline, self.metrics = pipeline, pipeline.metrics
        host, _, port = settings.tcp_bind.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.tls = settings.server_tls()
        self.hello_s = settings.tcp_hello_timeout_s
        self.idle_s = settings.tcp_idle_timeout_s
        self.read_s = settings.tcp_read_timeout_s
        self.max_connections = settings.tcp_max_connections
        self.backlog = settings.backlog
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            backlog=self.backlog,
            ssl=self.tls,
            ssl_handshake_timeout=self.hello_s if self.tls is not None else None,
        )
        self.port = self.server.sockets[0].getsockname()[1]  # the real one when 0 was asked
        logger.info(
            "TCP endpoint listening",
            extra={"host": self.host, "port": self.port, "tls": self.tls is not None},
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
