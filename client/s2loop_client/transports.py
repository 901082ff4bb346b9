"""How a request reaches the server: one small interface, several transports (as
httpx does): keep-alive HTTP, WebSocket, TCP frames, each in a blocking
(:class:`Transport`) and an asyncio (:class:`AsyncTransport`) form, and one
:class:`MockTransport` that serves both, for tests.

Each protocol is written once without I/O (:class:`HTTPProtocol`, :class:`WSProtocol`,
:class:`TCPProtocol`: the endpoint, what a request looks like, how an answer is read,
which failure means what); its two transports hold only the connection and the calls
that block or await.

A transport sends bytes and gives back the answer decoded, with its status carried
explicitly: ``request(route, payload) -> (status, answer)`` for ``route`` ``act`` or
``batch``, ``info(model) -> (status, answer)`` (async: ``arequest``, ``ainfo``). The
status is HTTP's status line, or, over WebSocket and TCP (no status line), the
``status`` an error map carries (:func:`s2loop_client.framing.status_of`); never guessed
from an answer's first bytes. An answer that cannot be decoded is
:class:`~s2loop_client.errors.BadAnswer`.

A transport raises :class:`NotSent` when the request may be sent again: it provably
never left (connection refused, no such host, or a kept connection found closed while
writing), or it went out on a kept-alive connection that the other end closed before a
single byte of answer (the keep-alive race every HTTP client meets; a proxy such as
HAProxy closes the client's connection that way when its own kept connection to a
replica broke, and the TCP endpoint closes idle connections). Resending is harmless
here: an act is stateless, the same observation gets the same answer (a Poisson one,
fresh draws, as it would anyway). Any other failure is
:class:`~s2loop_client.errors.ConnectionFailed` or :class:`~s2loop_client.errors.Timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgpack

from s2loop_client import codec as wirecodec
from s2loop_client import contract as wire
from s2loop_client import framing
from s2loop_client.errors import BadAnswer, ConnectionFailed, Timeout, from_error_body

PATHS = {"act": wire.ACT_PATH, "batch": wire.BATCH_PATH}
Reply = tuple[int, Any]  # (status, the decoded answer)


class NotSent(Exception):
    """The request never reached the server: safe to send again."""


def decode(data: bytes | str, codec: str, status: int) -> Any:
    """An answer's bytes as Python objects; BadAnswer when they are not ``codec``."""
    try:
        return wirecodec.loads(data, codec)
    except wirecodec.DecodeError as exc:
        raise BadAnswer("bad_answer", f"unreadable answer: {exc}", status) from None


def _check_codec(codec: str) -> str:
    if codec not in wire.CODECS:
        raise ValueError(f"codec must be one of {wire.CODECS}, got {codec!r}")
    return codec


class Transport(ABC):
    """A blocking transport."""

    def __init__(self, codec: str) -> None:
        self.codec = _check_codec(codec)

    @abstractmethod
    def request(self, route: str, payload: bytes) -> Reply: ...

    @abstractmethod
    def info(self, model: str) -> Reply: ...

    def close(self) -> None:  # noqa: B027 - nothing to close by default
        pass


class AsyncTransport(ABC):
    """An asyncio transport: the same contract, awaited."""

    def __init__(self, codec: str) -> None:
        self.codec = _check_codec(codec)

    @abstractmethod
    async def arequest(self, route: str, payload: bytes) -> Reply: ...

    @abstractmethod
    async def ainfo(self, model: str) -> Reply: ...

    async def aclose(self) -> None:  # noqa: B027 - nothing to close by default
        pass


# ------------------------------------------------------- the protocols, without I/O


def _refused(exc: OSError, tls: bool = False) -> Exception:
    """What a failed connect raises: :class:`NotSent` where no server was there to take
    the request (refused, no such host), :class:`Timeout`, else ConnectionFailed."""
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return NotSent(str(exc))
    if isinstance(exc, TimeoutError):
        return Timeout("timeout", "connecting took longer than timeout_s")
    return ConnectionFailed("connection", f"TLS: {exc}" if tls else str(exc))


def _unsent(exc: OSError, timeout_s: float) -> Exception:
    """What a failed write raises: :class:`NotSent` for a kept connection found closed."""
    if isinstance(exc, BrokenPipeError | ConnectionResetError):  # a kept connection gone idle
        return NotSent(str(exc))
    if _timed_out(exc):
        return Timeout("timeout", f"could not send within {timeout_s} s")
    return ConnectionFailed("connection", str(exc))


def _unanswered(
    exc: BaseException, kept: bool, timeout_s: float, resendable: tuple[type, ...] = ()
) -> Exception:
    """What a failure while waiting for the answer raises: :class:`NotSent` when a kept
    connection was closed before a single answer byte (``resendable``: how the protocol
    says so)."""
    if _timed_out(exc):
        return Timeout("timeout", f"no answer within {timeout_s} s")
    if kept and isinstance(exc, resendable):
        return NotSent(f"kept connection closed before an answer: {exc}")
    return ConnectionFailed("connection", f"connection lost: {exc}")


def _timed_out(exc: BaseException) -> bool:
    """A kernel timeout (EAGAIN on a blocking socket) or Python's."""
    return isinstance(exc, TimeoutError | BlockingIOError)


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(eq=False)
class Endpoint:
    """What every transport is made with: the server, the codec, the key, the client's
    timeout, and TLS verification (True: the system's CAs, a CA file path, or False)."""

    url: str
    codec: str = "json"
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 1.0
    verify: bool | str = True

    def __post_init__(self) -> None:
        _check_codec(self.codec)


class HTTPProtocol(Endpoint):
    """HTTP without I/O: where a request goes, its headers, its answer decoded (the
    control plane, model info, always answers JSON)."""

    #: a kept connection closed before a single answer byte: the request may go again
    resendable: ClassVar[tuple[type, ...]] = (http.client.RemoteDisconnected, ConnectionResetError)

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"an HTTP server URL looks like http://HOST:PORT, got {self.url!r}"
            raise ValueError(msg)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.context = _tls_context(self.verify) if self.https else None
        media = wire.MSGPACK if self.codec == "msgpack" else wire.JSON
        self.headers = {"Content-Type": media, "Accept": media}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    @staticmethod
    def info_path(model: str) -> str:
        return f"{wire.MODELS_PATH}/{model}"

    def reply(self, status: int, data: bytes, payload: bytes | None) -> Reply:
        return status, decode(data, self.codec if payload is not None else "json", status)


class WSProtocol(Endpoint):
    """``/v1/act/ws`` without I/O: text frames for JSON, binary frames for msgpack, the
    status in the answer; batches and model info go over HTTP to the same server."""

    http_transport: ClassVar[Callable[..., Any]]  # the HTTP twin of the same flavour

    def __post_init__(self) -> None:
        super().__post_init__()
        self.http = self.http_transport(
            self.url, self.codec, self.api_key, self.timeout_s, self.verify
        )
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{wire.WS_PATH}"
        self.options = {
            "additional_headers": (
                {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            ),
            "ssl": self.http.context,
            "compression": None,
            "max_size": None,
        }

    def message(self, payload: bytes) -> bytes | str:
        return payload.decode() if self.codec == "json" else payload

    def reply(self, data: bytes | str) -> Reply:
        answer = decode(data, self.codec, 200)
        return framing.status_of(answer), answer


def _handshake_error(exc: Any) -> Exception:
    """A WebSocket handshake the server refused (401), as its error answer says."""
    try:
        body = wirecodec.loads(exc.response.body, "json")
    except Exception:
        body = {"error": {"kind": "connection", "message": str(exc)}}
    return from_error_body(body, exc.response.status_code)


class TCPProtocol(Endpoint):
    """Length-prefixed msgpack frames (:mod:`s2loop_client.framing`) without I/O:
    ``tcp://HOST:PORT`` in plaintext, ``tcps://HOST:PORT`` over TLS (the server's TCP
    endpoint speaks TLS whenever it has a certificate); frames are always msgpack. With
    an ``api_key`` a connection opens with a hello frame."""

    resendable: ClassVar[tuple[type, ...]] = (framing.NoAnswerBytes,)

    def __post_init__(self) -> None:
        self.codec = "msgpack"  # TCP frames are always msgpack
        self.host, self.port, self.context = tcp_endpoint(self.url, self.verify)
        # the server's answers as Python objects (plain maps and lists: the server sends
        # no ndarray maps, so no per-map hook); msgpack >= 1.0's defaults are raw=False
        # and strict_map_key=True, and a call without keywords costs a fifth less
        self._unpack = msgpack.unpackb

    def reply(self, data: bytes) -> Reply:
        try:
            answer = self._unpack(data)
        except Exception as exc:  # msgpack raises several unrelated exception types
            raise BadAnswer("bad_answer", f"unreadable answer: {exc}") from None
        return framing.status_of(answer), answer

    @staticmethod
    def info_payload(model: str) -> bytes:
        return wirecodec.pack({"model_info": model})

    @staticmethod
    def welcomed(reply: Reply) -> None:
        """Raises the server's refusal of the hello frame (a wrong key)."""
        status, answer = reply
        if status != 200:
            raise from_error_body(answer, status)


def pack_hello(api_key: str) -> bytes:
    return wirecodec.pack({"hello": {"api_key": api_key}})


#: the URL schemes of the server's TCP endpoint (plaintext, TLS)
TCP_SCHEMES = ("tcp", "tcps")


def tcp_endpoint(url: str, verify: bool | str = True) -> tuple[str, int, ssl.SSLContext | None]:
    """``(host, port, TLS context or None)`` of a ``tcp://`` or ``tcps://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in TCP_SCHEMES or not parts.hostname or not parts.port:
        msg = f"a TCP endpoint looks like tcp://HOST:PORT or tcps://HOST:PORT, got {url!r}"
        raise ValueError(msg)
    context = _tls_context(verify) if parts.scheme == "tcps" else None
    return parts.hostname, parts.port, context


# --------------------------------------------------------------------- blocking


class HTTPTransport(HTTPProtocol, Transport):
    """One kept-alive connection (``http.client``, TCP_NODELAY): the lightest HTTP
    client in Python, a few microseconds per request over a raw socket."""

    conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.https:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.connect()
            except OSError as exc:
                raise _refused(exc) from None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
        return self.conn

    def _call(self, method: str, path: str, payload: bytes | None) -> Reply:
        kept = self.conn is not None  # a connection an earlier request already used
        conn = self._connect()
        try:
            conn.request(method, self.prefix + path, body=payload, headers=self.headers)
        except OSError as exc:
            self.close()
            raise _unsent(exc, self.timeout_s) from None
        try:
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _unanswered(exc, kept, self.timeout_s, self.resendable) from None
        return self.reply(status, data, payload)

    def request(self, route: str, payload: bytes) -> Reply:
        return self._call("POST", PATHS[route], payload)

    def info(self, model: str) -> Reply:
        return self._call("GET", self.info_path(model), None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class WSTransport(WSProtocol, Transport):
    """``/v1/act/ws`` with websockets' blocking client."""

    http_transport = HTTPTransport
    ws: Any = None

    def _connect(self) -> Any:
        if self.ws is None:
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            self._stack = contextlib.ExitStack()  # websockets closes what its `with` opened
            try:
                self.ws = self._stack.enter_context(
                    connect(self.ws_url, open_timeout=self.timeout_s, **self.options)
                )
            except InvalidStatus as exc:  # refused at the handshake (401)
                raise _handshake_error(exc) from None
            except OSError as exc:
                raise _refused(exc) from None
            self.ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ws

    def request(self, route: str, payload: bytes) -> Reply:
        if route != "act":
            return self.http.request(route, payload)
        from websockets.exceptions import ConnectionClosed

        ws = self._connect()
        try:
            ws.send(self.message(payload))
        except ConnectionClosed as exc:
            self.close()
            raise NotSent(str(exc)) from None
        try:
            data = ws.recv(timeout=self.timeout_s)
        except (TimeoutError, ConnectionClosed) as exc:
            self.close()  # a late answer would come out of step: start afresh
            raise _unanswered(exc, False, self.timeout_s) from None
        return self.reply(data)

    def info(self, model: str) -> Reply:
        return self.http.info(model)

    def close(self) -> None:
        if self.ws is not None:
            self.ws = None
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                self._stack.close()
        self.http.close()


class TCPTransport(TCPProtocol, Transport):
    """TCP frames on a blocking socket. A plaintext socket is blocking with the kernel's
    own receive and send timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``) rather than
    Python's, which polls before every ``send`` and ``recv``: two system calls fewer per
    request."""

    sock: socket.socket | None = None
    kept = False  # the connection has answered before (the server may close it idle)

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.buffer = bytearray()  # bytes read past the last answer (none, in lockstep)
            self.kept = False
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            except OSError as exc:
                raise _refused(exc) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=self.host)
                except OSError as exc:  # ssl.SSLError included
                    sock.close()
                    raise ConnectionFailed("connection", f"TLS: {exc}") from None
            else:
                _kernel_timeouts(sock, self.timeout_s)
            self.sock = sock
            if self.api_key is not None:
                try:
                    self.welcomed(self._roundtrip(pack_hello(self.api_key)))
                except Exception:
                    self.close()
                    raise
        return self.sock

    def _roundtrip(self, payload: bytes) -> Reply:
        sock = self.sock
        assert sock is not None
        kept, self.kept = self.kept, True
        try:
            sock.sendall(framing.frame(payload))
        except OSError as exc:
            self.close()
            raise _unsent(exc, self.timeout_s) from None
        try:
            data = framing.read_frame(sock, self.buffer)
        except (OSError, framing.FrameTooLarge) as exc:
            self.close()
            raise _unanswered(exc, kept, self.timeout_s, self.resendable) from None
        return self.reply(data)

    def request(self, route: str, payload: bytes) -> Reply:
        if self.sock is None:
            self._connect()
        return self._roundtrip(payload)

    def info(self, model: str) -> Reply:
        return self.request("info", self.info_payload(model))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def _kernel_timeouts(sock: socket.socket, timeout_s: float) -> None:
    sock.settimeout(None)
    seconds = int(timeout_s)
    timeval = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


# --------------------------------------------------------------------- asyncio


class AsyncHTTPTransport(HTTPProtocol, AsyncTransport):
    """HTTP through ``httpx.AsyncClient`` (one pool of kept-alive connections)."""

    client: Any = None

    async def _call(self, method: str, path: str, payload: bytes | None) -> Reply:
        import httpx

        if self.client is None:
            from s2loop_client.server import tls

            self.client = httpx.AsyncClient(
                base_url=self.url.rstrip("/"), timeout=self.timeout_s, verify=tls(self.verify)
            )
        try:
            r = await self.client.request(method, path, content=payload, headers=self.headers)
        except httpx.ConnectError as exc:
            raise NotSent(str(exc)) from None
        except httpx.RemoteProtocolError as exc:  # closed before an answer: see above
            raise NotSent(str(exc)) from None
        except httpx.TimeoutException:
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed("connection", str(exc)) from None
        return self.reply(r.status_code, r.content, payload)

    async def arequest(self, route: str, payload: bytes) -> Reply:
        return await self._call("POST", PATHS[route], payload)

    async def ainfo(self, model: str) -> Reply:
        return await self._call("GET", self.info_path(model), None)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class AsyncWSTransport(WSProtocol, AsyncTransport):
    """``/v1/act/ws`` with websockets' asyncio client."""

    http_transport = AsyncHTTPTransport
    ws: Any = None

    async def arequest(self, route: str, payload: bytes) -> Reply:
        if route != "act":
            return await self.http.arequest(route, payload)
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        if self.ws is None:
            try:
                self.ws = await asyncio.wait_for(
                    connect(self.ws_url, **self.options), self.timeout_s
                )
            except InvalidStatus as exc:  # refused at the handshake (401)
                raise _handshake_error(exc) from None
            except OSError as exc:
                raise _refused(exc) from None
        try:
            await self.ws.send(self.message(payload))
            data = await asyncio.wait_for(self.ws.recv(), self.timeout_s)
        except (TimeoutError, ConnectionClosed) as exc:
            await self._drop()
            raise _unanswered(exc, False, self.timeout_s) from None
        return self.reply(data)

    async def ainfo(self, model: str) -> Reply:
        return await self.http.ainfo(model)

    async def _drop(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None

    async def aclose(self) -> None:
        await self._drop()
        await self.http.aclose()


class AsyncTCPTransport(TCPProtocol, AsyncTransport):
    """TCP frames on asyncio streams."""

    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    kept = False

    async def _connect(self) -> None:
        host, context = self.host, self.context
        try:
            self.streams = await asyncio.wait_for(
                asyncio.open_connection(
                    host, self.port, ssl=context, server_hostname=host if context else None
                ),
                self.timeout_s,
            )
        except OSError as exc:  # ssl.SSLError included
            raise _refused(exc, tls=context is not None) from None
        self.kept = False
        sock = self.streams[1].get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.api_key is not None:
            try:
                self.welcomed(await self._roundtrip(pack_hello(self.api_key)))
            except Exception:
                await self.aclose()
                raise

    async def _roundtrip(self, payload: bytes) -> Reply:
        assert self.streams is not None
        reader, writer = self.streams
        kept, self.kept = self.kept, True
        writer.write(framing.frame(payload))
        try:
            data = await asyncio.wait_for(framing.read_frame_async(reader), self.timeout_s)
        except (OSError, asyncio.IncompleteReadError, framing.FrameTooLarge) as exc:
            await self.aclose()
            raise _unanswered(exc, kept, self.timeout_s, self.resendable) from None
        return self.reply(data)

    async def arequest(self, route: str, payload: bytes) -> Reply:
        if self.streams is None:
            await self._connect()
        return await self._roundtrip(payload)

    async def ainfo(self, model: str) -> Reply:
        return await self.arequest("info", self.info_payload(model))

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


# --------------------------------------------------------------------- mock

Handler = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


class MockTransport(Transport, AsyncTransport):
    """For tests of code that uses the client, without a server, blocking or asyncio:
    ``handler(route, request) -> (status, answer)`` with ``route`` ``act``, ``batch`` or
    ``info``. The request and answer go through the codec, as on the wire."""

    def __init__(self, handler: Handler, codec: str = "json") -> None:
        Transport.__init__(self, codec)
        self.handler = handler

    def _answer(self, route: str, request: dict[str, Any]) -> Reply:
        status, answer = self.handler(route, request)
        return status, decode(wirecodec.dumps(answer, self.codec), self.codec, status)

    def request(self, route: str, payload: bytes) -> Reply:
        return self._answer(route, wirecodec.loads(payload, self.codec))

    def info(self, model: str) -> Reply:
        return self._answer("info", {"model": model})

    async def arequest(self, route: str, payload: bytes) -> Reply:
        return self.request(route, payload)

    async def ainfo(self, model: str) -> Reply:
        return self.info(model)


#: transport name -> (blocking class, asyncio class)
KINDS: dict[str, tuple[type[Transport], type[AsyncTransport]]] = {
    "http": (HTTPTransport, AsyncHTTPTransport),
    "ws": (WSTransport, AsyncWSTransport),
    "tcp": (TCPTransport, AsyncTCPTransport),
}
