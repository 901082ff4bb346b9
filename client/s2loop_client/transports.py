"""How a request reaches the server: one small interface, several transports (as
httpx does): keep-alive HTTP, WebSocket, TCP frames, each in a blocking
(:class:`Transport`) and an asyncio (:class:`AsyncTransport`) form, and one
:class:`MockTransport` that serves both, for tests.

A transport sends bytes and gives back the answer decoded, with its status carried
explicitly: ``request(route, payload) -> (status, answer)`` for ``route`` ``act`` or
``batch``, ``info(model) -> (status, answer)`` (async: ``arequest``, ``ainfo``). The
status is HTTP's status line, or, over WebSocket and TCP (no status line), the
``status`` an error map carries (:func:`s2loop_client.framing.status_of`); never guessed
from an answer's first bytes. An answer that cannot be decoded is
:class:`~s2loop_client.errors.BadAnswer`.

A transport raises :class:`NotSent` when the request may be sent again: it provably
never left (connection refused, or a kept connection found closed while writing), or it
went out on a kept-alive connection that the other end closed before a single byte of
answer (the keep-alive race every HTTP client meets; a proxy such as HAProxy closes the
client's connection that way when its own kept connection to a replica broke, and the
TCP endpoint closes idle connections). Resending is harmless here: an act is stateless,
the same observation gets the same answer (a Poisson one, fresh draws, as it would
anyway). Any other failure is :class:`~s2loop_client.errors.ConnectionFailed` or
:class:`~s2loop_client.errors.Timeout`.
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
from typing import Any
from urllib.parse import urlsplit

import msgpack

from s2loop_client import codec as wirecodec
from s2loop_client import contract as wire
from s2loop_client import framing
from s2loop_client.errors import BadAnswer, ConnectionFailed, Timeout

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


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _http_parts(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an HTTP server URL looks like http://HOST:PORT, got {url!r}")
    return parts


def _headers(codec: str, api_key: str | None) -> dict[str, str]:
    media = wire.MSGPACK if codec == "msgpack" else wire.JSON
    headers = {"Content-Type": media, "Accept": media}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{wire.WS_PATH}"


class HTTPTransport(Transport):
    """One kept-alive connection (``http.client``, TCP_NODELAY): the lightest HTTP
    client in Python, a few microseconds per request over a raw socket."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        parts = _http_parts(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.context = _tls_context(verify) if self.https else None
        self.headers = _headers(codec, api_key)
        self.conn: http.client.HTTPConnection | None = None

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
            except (ConnectionRefusedError, socket.gaierror) as exc:
                raise NotSent(str(exc)) from None
            except TimeoutError:
                raise Timeout("timeout", "connecting took longer than timeout_s") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
        return self.conn

    def _call(self, method: str, path: str, payload: bytes | None) -> Reply:
        kept = self.conn is not None  # a connection an earlier request already used
        conn = self._connect()
        try:
            conn.request(method, self.prefix + path, body=payload, headers=self.headers)
        except (BrokenPipeError, ConnectionResetError) as exc:  # a kept connection gone idle
            self.close()
            raise NotSent(str(exc)) from None
        except OSError as exc:
            self.close()
            raise ConnectionFailed("connection", str(exc)) from None
        try:
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        except TimeoutError:
            self.close()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            self.close()
            if kept:  # closed before any answer byte on a kept connection: resend
                raise NotSent(f"kept connection closed before an answer: {exc}") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        # the control plane (model info) always answers JSON
        return status, decode(data, self.codec if payload is not None else "json", status)

    def request(self, route: str, payload: bytes) -> Reply:
        return self._call("POST", PATHS[route], payload)

    def info(self, model: str) -> Reply:
        return self._call("GET", f"{wire.MODELS_PATH}/{model}", None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class WSTransport(Transport):
    """``/v1/act/ws``: text frames for JSON, binary frames for msgpack; batches and model
    info go over HTTP to the same server."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        self.http = HTTPTransport(url, codec, api_key, timeout_s, verify)
        self.url = _ws_url(url)
        self.api_key, self.timeout_s = api_key, timeout_s
        self.context = self.http.context
        self.ws: Any = None
        self._stack = contextlib.ExitStack()

    def _connect(self) -> Any:
        if self.ws is None:
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            try:
                self.ws = self._stack.enter_context(
                    connect(
                        self.url,
                        additional_headers=headers,
                        open_timeout=self.timeout_s,
                        ssl=self.context,
                        compression=None,
                        max_size=None,
                    )
                )
            except ConnectionRefusedError as exc:
                raise NotSent(str(exc)) from None
            except InvalidStatus as exc:  # refused at the handshake (401)
                raise _handshake_error(exc) from None
            except TimeoutError:
                raise Timeout("timeout", "the WebSocket handshake took too long") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            self.ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ws

    def request(self, route: str, payload: bytes) -> Reply:
        if route != "act":
            return self.http.request(route, payload)
        from websockets.exceptions import ConnectionClosed

        ws = self._connect()
        try:
            ws.send(payload.decode() if self.codec == "json" else payload)
        except ConnectionClosed as exc:
            self.close()
            raise NotSent(str(exc)) from None
        try:
            data = ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            self.close()  # its answer would come late and out of step: start afresh
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except ConnectionClosed as exc:
            self.close()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        answer = decode(data, self.codec, 200)
        return framing.status_of(answer), answer

    def info(self, model: str) -> Reply:
        return self.http.info(model)

    def close(self) -> None:
        self.ws = None
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            self._stack.close()
        self._stack = contextlib.ExitStack()
        self.http.close()


def _handshake_error(exc: Any) -> Exception:
    from s2loop_client.errors import from_error_body

    try:
        body = wirecodec.loads(exc.response.body, "json")
    except Exception:
        body = {"error": {"kind": "connection", "message": str(exc)}}
    return from_error_body(body, exc.response.status_code)


class TCPTransport(Transport):
    """Length-prefixed msgpack frames (:mod:`s2loop_client.framing`): the shortest path
    to the server, for 1 kHz loops. ``tcp://HOST:PORT`` in plaintext, ``tcps://HOST:PORT``
    over TLS (the server's TCP endpoint speaks TLS whenever it has a certificate);
    ``verify``: True (the system's CAs), a CA file path, or False (no check).

    A plaintext socket is blocking with the kernel's own receive and send timeouts
    (``SO_RCVTIMEO``/``SO_SNDTIMEO``) rather than Python's, which polls before every
    ``send`` and ``recv``: two system calls fewer per request."""

    def __init__(
        self,
        url: str,
        codec: str = "msgpack",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__("msgpack")  # TCP frames are always msgpack
        self.host, self.port, self.context = tcp_endpoint(url, verify)
        self.address = (self.host, self.port)
        self.api_key, self.timeout_s = api_key, timeout_s
        self.sock: socket.socket | None = None
        self.buffer = bytearray()  # bytes read past the last answer (none, in lockstep)
        self.kept = False  # the connection has answered before (the server may close it idle)
        self._unpack = _answer_unpacker()

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.buffer.clear()
            self.kept = False
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout_s)
            except ConnectionRefusedError as exc:
                raise NotSent(str(exc)) from None
            except TimeoutError:
                raise Timeout("timeout", "connecting took longer than timeout_s") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=self.host)
                except (ssl.SSLError, OSError) as exc:
                    sock.close()
                    raise ConnectionFailed("connection", f"TLS: {exc}") from None
            else:
                _kernel_timeouts(sock, self.timeout_s)
            self.sock = sock
            if self.api_key is not None:
                status, answer = self._roundtrip(pack_hello(self.api_key))
                if status != 200:
                    self.close()
                    from s2loop_client.errors import from_error_body

                    raise from_error_body(answer, status)
        return self.sock

    def _roundtrip(self, payload: bytes) -> Reply:
        sock = self.sock
        assert sock is not None
        kept, self.kept = self.kept, True
        try:
            sock.sendall(framing.frame(payload))
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            raise NotSent(str(exc)) from None
        except OSError as exc:
            self.close()
            if _timed_out(exc):
                raise Timeout("timeout", f"could not send within {self.timeout_s} s") from None
            raise ConnectionFailed("connection", str(exc)) from None
        try:
            data = framing.read_frame(sock, self.buffer)
        except framing.NoAnswerBytes as exc:
            self.close()
            if kept:  # a kept connection the server closed (idle): send again
                raise NotSent(f"kept connection closed before an answer: {exc}") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        except (OSError, framing.FrameTooLarge) as exc:
            self.close()
            if _timed_out(exc):
                raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        try:
            answer = self._unpack(data)
        except Exception as exc:  # msgpack raises several unrelated exception types
            raise BadAnswer("bad_answer", f"unreadable answer: {exc}") from None
        return framing.status_of(answer), answer

    def request(self, route: str, payload: bytes) -> Reply:
        if self.sock is None:
            self._connect()
        return self._roundtrip(payload)

    def info(self, model: str) -> Reply:
        if self.sock is None:
            self._connect()
        return self._roundtrip(wirecodec.pack({"model_info": model}))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def _answer_unpacker() -> Callable[[bytes], Any]:
    """The server's TCP answers as Python objects (plain maps and lists: the server sends
    no ndarray maps, so no per-map hook)."""
    from functools import partial

    return partial(msgpack.unpackb, raw=False, strict_map_key=True)


def pack_hello(api_key: str) -> bytes:
    return wirecodec.pack({"hello": {"api_key": api_key}})


def _kernel_timeouts(sock: socket.socket, timeout_s: float) -> None:
    sock.settimeout(None)
    seconds = int(timeout_s)
    timeval = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _timed_out(exc: BaseException) -> bool:
    """A kernel timeout (EAGAIN on a blocking socket) or Python's."""
    return isinstance(exc, TimeoutError | BlockingIOError)


def tcp_endpoint(url: str, verify: bool | str = True) -> tuple[str, int, ssl.SSLContext | None]:
    """``(host, port, TLS context or None)`` of a ``tcp://`` or ``tcps://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tcps") or not parts.hostname or not parts.port:
        msg = f"a TCP endpoint looks like tcp://HOST:PORT or tcps://HOST:PORT, got {url!r}"
        raise ValueError(msg)
    context = _tls_context(verify) if parts.scheme == "tcps" else None
    return parts.hostname, parts.port, context


# --------------------------------------------------------------------- asyncio


class AsyncHTTPTransport(AsyncTransport):
    """HTTP through ``httpx.AsyncClient`` (one pool of kept-alive connections)."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        _http_parts(url)
        self.url, self.timeout_s, self.verify = url.rstrip("/"), timeout_s, verify
        self.headers = _headers(codec, api_key)
        self.client: Any = None

    async def _call(self, method: str, path: str, payload: bytes | None) -> Reply:
        import httpx

        if self.client is None:
            from s2loop_client.server import tls

            self.client = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout_s, verify=tls(self.verify)
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
        codec = self.codec if payload is not None else "json"
        return r.status_code, decode(r.content, codec, r.status_code)

    async def arequest(self, route: str, payload: bytes) -> Reply:
        return await self._call("POST", PATHS[route], payload)

    async def ainfo(self, model: str) -> Reply:
        return await self._call("GET", f"{wire.MODELS_PATH}/{model}", None)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class AsyncWSTransport(AsyncTransport):
    """``/v1/act/ws`` with websockets' asyncio client; batches and model info over HTTP."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        self.http = AsyncHTTPTransport(url, codec, api_key, timeout_s, verify)
        self.url = _ws_url(url)
        self.api_key, self.timeout_s = api_key, timeout_s
        self.context = _tls_context(verify) if self.url.startswith("wss") else None
        self.ws: Any = None

    async def arequest(self, route: str, payload: bytes) -> Reply:
        if route != "act":
            return await self.http.arequest(route, payload)
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        if self.ws is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            try:
                self.ws = await asyncio.wait_for(
                    connect(
                        self.url, additional_headers=headers, compression=None, ssl=self.context
                    ),
                    self.timeout_s,
                )
            except InvalidStatus as exc:  # refused at the handshake (401)
                raise _handshake_error(exc) from None
            except TimeoutError:
                raise Timeout("timeout", "the WebSocket handshake took too long") from None
            except OSError as exc:
                raise NotSent(str(exc)) from None
        try:
            await self.ws.send(payload.decode() if self.codec == "json" else payload)
            data = await asyncio.wait_for(self.ws.recv(), self.timeout_s)
        except TimeoutError:
            await self._drop()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except ConnectionClosed as exc:
            await self._drop()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        answer = decode(data, self.codec, 200)
        return framing.status_of(answer), answer

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


class AsyncTCPTransport(AsyncTransport):
    """:class:`TCPTransport` on asyncio streams (``tcp://`` or ``tcps://``)."""

    def __init__(
        self,
        url: str,
        codec: str = "msgpack",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__("msgpack")
        self.host, self.port, self.context = tcp_endpoint(url, verify)
        self.api_key, self.timeout_s = api_key, timeout_s
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.kept = False
        self._unpack = _answer_unpacker()

    async def _connect(self) -> None:
        host, context = self.host, self.context
        try:
            self.streams = await asyncio.wait_for(
                asyncio.open_connection(
                    host, self.port, ssl=context, server_hostname=host if context else None
                ),
                self.timeout_s,
            )
        except ConnectionRefusedError as exc:
            raise NotSent(str(exc)) from None
        except TimeoutError:
            raise Timeout("timeout", "connecting took longer than timeout_s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed("connection", f"TLS: {exc}" if context else str(exc)) from None
        self.kept = False
        sock = self.streams[1].get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.api_key is not None:
            status, answer = await self._roundtrip(pack_hello(self.api_key))
            if status != 200:
                await self.aclose()
                from s2loop_client.errors import from_error_body

                raise from_error_body(answer, status)

    async def _roundtrip(self, payload: bytes) -> Reply:
        assert self.streams is not None
        reader, writer = self.streams
        kept, self.kept = self.kept, True
        writer.write(framing.frame(payload))
        try:
            data = await asyncio.wait_for(framing.read_frame_async(reader), self.timeout_s)
        except TimeoutError:
            await self.aclose()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except framing.NoAnswerBytes as exc:
            await self.aclose()
            if kept:
                raise NotSent(f"kept connection closed before an answer: {exc}") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        except (OSError, asyncio.IncompleteReadError, framing.FrameTooLarge) as exc:
            await self.aclose()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        try:
            answer = self._unpack(data)
        except Exception as exc:  # msgpack raises several unrelated exception types
            raise BadAnswer("bad_answer", f"unreadable answer: {exc}") from None
        return framing.status_of(answer), answer

    async def arequest(self, route: str, payload: bytes) -> Reply:
        if self.streams is None:
            await self._connect()
        return await self._roundtrip(payload)

    async def ainfo(self, model: str) -> Reply:
        return await self.arequest("info", wirecodec.pack({"model_info": model}))

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
